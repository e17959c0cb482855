"""What the agent's userspace costs per sample and per unique stack, on
processes with many distinct stacks (as real services have), beside the BPF
program's cost per sample: the figures to read a 64-CPU node's cost off.

The sampling core (agent.sampling, as the agent assembles it: symbolizer,
native unwind tables, profiler) profiles PROCESSES copies of
tests/workloads/many_stacks.c (random call paths DEPTH deep, built without
frame pointers); each collection's CPU time (time.process_time around
Profiler.collect: drain, symbolization, pprof building) is divided by its
samples and by its unique stacks. The first collection pays for reading the
files; the median of the others is the steady state.

Run as root: ``.venv/bin/python bench/node_scale.py [--processes 8] [--seconds 3]``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bpf_cost import STATS, program_stats  # noqa: E402

from agent.ebpf import PidEvent  # noqa: E402
from agent.pprof import ProfileBuilder  # noqa: E402
from agent.profiler import ProcessProfile  # noqa: E402
from agent.sampling import CoreOptions, SamplingCore  # noqa: E402

SOURCE = ROOT / "tests" / "workloads" / "many_stacks.c"
RATE = 97
COLLECTIONS = 6


def build(folder: Path) -> Path:
    binary = folder / "many_stacks"
    subprocess.run(
        ["gcc", "-O2", "-fomit-frame-pointer", "-fno-optimize-sibling-calls", "-o", str(binary),
         str(SOURCE)],
        check=True,
    )  # fmt: skip
    return binary


def measure(binary: Path, processes: int, depth: int, seconds: float) -> list[dict[str, float]]:
    duration = int(seconds * (COLLECTIONS + 1)) + 5
    workloads = [
        subprocess.Popen([str(binary), str(duration), str(depth), str(seed)])
        for seed in range(1, processes + 1)
    ]
    pids = {w.pid for w in workloads}
    builder = ProfileBuilder(RATE, time.time_ns())
    destination = ProcessProfile(builder)

    def classify(process: PidEvent) -> list[ProcessProfile]:
        return [destination] if process.pid in pids else []

    rows = []
    try:
        with SamplingCore(CoreOptions(sample_rate=RATE, python_enabled=False), classify) as core:
            program = core.session.program_id
            time_before, runs_before = program_stats(program)
            for _ in range(COLLECTIONS):
                time.sleep(seconds)
                core.profiler.poll(0)
                stacks_before, samples_before = len(builder), builder.sample_count
                cpu = time.process_time()
                core.profiler.collect()
                cpu = time.process_time() - cpu
                run_time, runs = program_stats(program)
                samples = builder.sample_count - samples_before
                rows.append(
                    {
                        "samples": samples,
                        "new_stacks": len(builder) - stacks_before,
                        "user_us_per_sample": 1e6 * cpu / max(samples, 1),
                        "bpf_ns_per_run": (run_time - time_before) / max(runs - runs_before, 1),
                        "cpu_ms": 1e3 * cpu,
                    }
                )
                runs_before, time_before = runs, run_time
    finally:
        for workload in workloads:
            workload.kill()
            workload.wait()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    old = STATS.read_text().strip()
    STATS.write_text("1")
    try:
        with tempfile.TemporaryDirectory() as folder:
            rows = measure(build(Path(folder)), args.processes, args.depth, args.seconds)
    finally:
        STATS.write_text(old)
    print(f"{args.processes} processes, random paths {args.depth} calls deep, {RATE} Hz, "
          f"a collection every {args.seconds:g} s")  # fmt: skip
    print("| collection | samples | new unique stacks | userspace ms | µs per sample | "
          "µs per new stack | BPF ns per run |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for number, row in enumerate(rows, 1):
        per_stack = 1e3 * row["cpu_ms"] / max(row["new_stacks"], 1)
        print(
            f"| {number} | {row['samples']} | {row['new_stacks']} | {row['cpu_ms']:.1f} | "
            f"{row['user_us_per_sample']:.1f} | {per_stack:.0f} | {row['bpf_ns_per_run']:.0f} |"
        )
    warm = rows[1:]
    per_sample = statistics.median(r["user_us_per_sample"] for r in warm)
    bpf = statistics.median(r["bpf_ns_per_run"] for r in warm)
    node = 64 * RATE * (per_sample * 1e-6 + bpf * 1e-9)
    print(
        f"\nwarm median: {per_sample:.1f} µs of userspace and {bpf / 1000:.1f} µs of BPF per "
        f"sample; a 64-CPU node busy on every CPU at {RATE} Hz: {node:.1%} of one CPU"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
