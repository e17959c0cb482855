"""What walking user stacks with unwind tables costs the BPF program, against
the frame-pointer walk, on the same stacks.

One C workload (tests/workloads/deep_chain.c: a chain of distinct functions,
CPU burnt in the leaf) is built twice, -O2 -fno-omit-frame-pointer and -O2
-fomit-frame-pointer. Two busy copies are profiled at 97 Hz in three ways: (a)
the frame-pointer binary walked by bpf_get_stack (a session without the native
walker), (b) the same binary walked with its tables, (c) the binary without
frame pointers walked with its tables. For each, the sampling program's run
time per run from the kernel's bpf stats (kernel.bpf_stats_enabled, restored
afterwards), for do_sample and for the tail-called walk_native, and the median
depth of the stacks recorded. Rounds alternate the cases so that a slow spell
of the machine falls on all of them. Run as root:
``.venv/bin/python bench/unwind.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bpf_cost import STATS, program_stats  # noqa: E402

from agent.ebpf import PidState, Session, SessionOptions  # noqa: E402
from agent.unwind import NativeUnwinder  # noqa: E402

RATE = 97
DEPTHS = (10, 30, 60)
# Frames besides the chain: leaf, main, __libc_start_call_main, __libc_start_main, _start.
OTHER_FRAMES = 5
WORKLOAD = ROOT / "tests" / "workloads" / "deep_chain.c"  # f0 ... f63: a depth uses the first ones
CASES = (
    ("a", "frame pointers", "bpf_get_stack"),
    ("b", "frame pointers", "tables"),
    ("c", "no frame pointers", "tables"),
)
# Goals of issue 13 for a 30-frame stack at 97 Hz.
GOAL_RATIO, GOAL_US = 2.0, 6.0


def build(workdir: Path) -> dict[bool, Path]:
    """The workload with (True) and without (False) frame pointers. In it each
    call is followed by an add, so none is a tail call, and alarm() stops a copy
    left behind by a killed bench."""
    binaries = {}
    for frame_pointers, flag in (
        (True, "-fno-omit-frame-pointer"),
        (False, "-fomit-frame-pointer"),
    ):
        binary = workdir / ("chain_fp" if frame_pointers else "chain_nofp")
        subprocess.run(["gcc", "-O2", flag, "-o", str(binary), str(WORKLOAD)], check=True)
        binaries[frame_pointers] = binary
    return binaries


@dataclass
class Measure:
    do_sample_ns: int
    do_sample_runs: int
    walk_native_ns: int
    walk_native_runs: int
    samples: int  # profiled runs (sample_total)
    idle_ns_per_run: float  # a run that profiles nothing, measured in the same session
    depths: list[int]  # one per recorded sample
    ends: dict[str, int]  # native walks by how they ended

    @property
    def ns_per_run(self) -> float:
        return self.do_sample_ns / max(self.do_sample_runs, 1)

    @property
    def ns_per_sample(self) -> float:
        """do_sample's time less the runs that profiled nothing, per profiled run."""
        other = (self.do_sample_runs - self.samples) * self.idle_ns_per_run
        return (self.do_sample_ns - other) / max(self.samples, 1)

    @property
    def median_depth(self) -> float:
        return statistics.median(self.depths) if self.depths else 0.0


def own_programs() -> dict[str, int]:
    """Name to id of the BPF programs this process holds (bpftool names them)."""
    ids = set()
    for info in Path("/proc/self/fdinfo").iterdir():
        try:
            text = info.read_text()
        except OSError:
            continue
        if "prog_id:" in text and "link_id:" not in text:
            ids.update(int(line.split()[1]) for line in text.splitlines() if "prog_id:" in line)
    names = {}
    for program_id in ids:
        shown = subprocess.run(
            ["bpftool", "-j", "prog", "show", "id", str(program_id)],
            capture_output=True,
            text=True,
            check=True,
        )
        names[json.loads(shown.stdout)["name"]] = program_id
    return names


def measure(pids: list[int], native: bool, seconds: float) -> Measure:
    with Session(SessionOptions(sample_rate=RATE, native_unwinding=native)) as session:
        programs = own_programs()
        sampler = programs["do_sample"]
        walker = programs.get("walk_native")
        # Runs that profile nothing (the workloads are not marked yet) cost this much.
        time.sleep(0.2)
        before = program_stats(sampler)
        time.sleep(min(2.0, seconds / 2))
        after = program_stats(sampler)
        idle = (after[0] - before[0]) / max(after[1] - before[1], 1)
        unwinder = NativeUnwinder(session) if native else None
        for pid in pids:
            session.set_pid(pid, PidState.PROFILE)
            if unwinder is not None:
                unwinder.add(pid)
        time.sleep(0.5)
        session.drain()
        start = (
            program_stats(sampler),
            program_stats(walker) if walker else (0, 0),
            session.read_sample_total(),
            session.read_unwind_stats() if native else {},
        )
        time.sleep(seconds)
        end = (
            program_stats(sampler),
            program_stats(walker) if walker else (0, 0),
            session.read_sample_total(),
            session.read_unwind_stats() if native else {},
        )
        depths = [
            len(sample.user_stack)
            for sample in session.drain()
            if sample.pid in pids
            for _ in range(sample.count)
        ]
    ends = {
        name: end[3][name] - start[3][name]
        for name in end[3]
        if name.startswith("end_") and end[3][name] > start[3][name]
    }
    return Measure(
        do_sample_ns=end[0][0] - start[0][0],
        do_sample_runs=end[0][1] - start[0][1],
        walk_native_ns=end[1][0] - start[1][0],
        walk_native_runs=end[1][1] - start[1][1],
        samples=end[2] - start[2],
        idle_ns_per_run=idle,
        depths=depths,
        ends=ends,
    )


def start(binary: Path, depth: int) -> list[subprocess.Popen]:
    chain = str(depth - OTHER_FRAMES)
    workloads = [subprocess.Popen([str(binary), chain]) for _ in range(2)]
    time.sleep(0.2)
    return workloads


def stop(workloads: list[subprocess.Popen]) -> None:
    for workload in workloads:
        workload.kill()
        workload.wait()


def one_round(binaries: dict[bool, Path], depth: int, seconds: float) -> dict[str, Measure]:
    measures = {}
    workloads = start(binaries[True], depth)
    try:
        pids = [w.pid for w in workloads]
        measures["a"] = measure(pids, False, seconds)
        measures["b"] = measure(pids, True, seconds)
    finally:
        stop(workloads)
    workloads = start(binaries[False], depth)
    try:
        measures["c"] = measure([w.pid for w in workloads], True, seconds)
    finally:
        stop(workloads)
    return measures


def median_of(measures: list[Measure], attribute: str) -> float:
    return statistics.median(getattr(m, attribute) for m in measures)


def report(round_: int, depth: int, case: str, m: Measure) -> None:
    print(
        f"round {round_ + 1} depth {depth} case {case}: {m.ns_per_run:.0f} ns/run, "
        f"{m.ns_per_sample:.0f} ns/sample, {m.samples}/{m.do_sample_runs} runs profiled, "
        f"walk_native {m.walk_native_runs} runs {m.walk_native_ns} ns, "
        f"median depth {m.median_depth:g}, ends {m.ends}",
        flush=True,
    )
    if m.do_sample_runs == 0:
        print("do_sample's stats did not move: was kernel.bpf_stats_enabled reset meanwhile?")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0, help="per case and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--depth", type=int, action="append", help=f"default: {DEPTHS}")
    args = parser.parse_args()
    # SIGTERM unwinds like Ctrl-C: workloads killed, bpf stats restored
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    depths = args.depth or list(DEPTHS)
    print(f"load before: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}", flush=True)
    results: dict[tuple[int, str], list[Measure]] = {}
    old = STATS.read_text().strip()
    STATS.write_text("1")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            binaries = build(Path(tmp))
            for round_ in range(args.rounds):
                for depth in depths:
                    for case, measure_ in one_round(binaries, depth, args.seconds).items():
                        results.setdefault((depth, case), []).append(measure_)
                        report(round_, depth, case, measure_)
    finally:
        STATS.write_text(old)
    print(f"load after: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}")
    print_tables(results, depths)
    return 0


def print_tables(results: dict[tuple[int, str], list[Measure]], depths: list[int]) -> None:
    print(
        "\n| frames | case | binary | walk | median depth | ns per run | profiled runs "
        "| idle ns per run | ns per sample | walk_native runs |"
    )
    print("|---:|---|---|---|---:|---:|---:|---:|---:|---:|")
    for depth in depths:
        for case, binary, walk in CASES:
            measures = results[(depth, case)]
            profiled = sum(m.samples for m in measures) / max(
                sum(m.do_sample_runs for m in measures), 1
            )
            print(
                f"| {depth} | {case} | {binary} | {walk} "
                f"| {median_of(measures, 'median_depth'):g} "
                f"| {median_of(measures, 'ns_per_run'):.0f} | {profiled:.0%} "
                f"| {median_of(measures, 'idle_ns_per_run'):.0f} "
                f"| {median_of(measures, 'ns_per_sample'):.0f} "
                f"| {sum(m.walk_native_runs for m in measures)} |"
            )
    print("\nRatios per round (ns per sample), then their median:\n")
    print("| frames | b / a | c / a | c / b |")
    print("|---:|---|---|---|")
    for depth in depths:
        a, b, c = (results[(depth, case)] for case in "abc")
        cells = []
        for top, bottom in ((b, a), (c, a), (c, b)):
            ratios = [t.ns_per_sample / s.ns_per_sample for t, s in zip(top, bottom, strict=True)]
            cells.append(
                ", ".join(f"{r:.2f}" for r in ratios) + f" → **{statistics.median(ratios):.2f}**"
            )
        print(f"| {depth} | " + " | ".join(cells) + " |")
    if len(depths) > 1:
        low, high = min(depths), max(depths)
        print(f"\nns per sample added by each frame, {low} to {high} frames:\n")
        for case, binary, walk in CASES:
            lows, highs = results[(low, case)], results[(high, case)]
            added = median_of(highs, "ns_per_sample") - median_of(lows, "ns_per_sample")
            frames = median_of(highs, "median_depth") - median_of(lows, "median_depth")
            print(f"- {case} ({binary}, {walk}): {added / max(frames, 1):.0f} ns")
    walker = [m for (_, case), ms in results.items() if case != "a" for m in ms]
    runs, ns = sum(m.walk_native_runs for m in walker), sum(m.walk_native_ns for m in walker)
    print(f"\nwalk_native's own stats over every table walk: {runs} runs, {ns} ns")
    if runs == 0 and sum(m.samples for m in walker):
        print("(a tail-called program's time is counted in the program attached: do_sample)")
    if 30 in depths:
        print("\nGoals for a 30-frame stack at 97 Hz, against case a:\n")
        a = results[(30, "a")]
        for case, binary, _ in CASES[1:]:
            top = results[(30, case)]
            ratio = statistics.median(
                t.ns_per_sample / s.ns_per_sample for t, s in zip(top, a, strict=True)
            )
            us = median_of(top, "ns_per_sample") / 1000
            met = "met" if ratio <= GOAL_RATIO else "NOT met"
            print(
                f"- {case} ({binary}): {ratio:.2f}× the frame-pointer walk, {met} "
                f"(goal ≤ {GOAL_RATIO:g}×)"
            )
            met = "met" if us <= GOAL_US else "NOT met"
            print(f"- {case} ({binary}): {us:.2f} µs per sample, {met} (goal ≤ {GOAL_US:g} µs)")


if __name__ == "__main__":
    sys.exit(main())
