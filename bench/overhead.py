"""Overhead of ``emberscope profile`` beside ``perf record`` on two busy processes.

Run as root: ``make bench`` (or ``.venv/bin/python bench/overhead.py --help``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from results import RESULTS, describe_machine, write_section

from agent.config import parse_duration

ROOT = Path(__file__).resolve().parents[1]
EMBERSCOPE = ROOT / ".venv" / "bin" / "emberscope"
BPF_STATS = Path("/proc/sys/kernel/bpf_stats_enabled")
PROGRAM = "do_sample"
# The design's targets for the agent, listed in bench/README.md.
TARGET_CPU_PCT, TARGET_RSS_MB, TARGET_BPF_US = 0.5, 80.0, 3.0

# Three call chains of different weight, so a profile has something to show.
WORKLOAD_C = ROOT / "tests" / "workloads" / "three_chains.c"


@dataclass
class Usage:
    """What one tool's run cost: CPU seconds (user + sys), peak RSS and its report."""

    tool: str
    cpu_s: float
    rss_mb: float
    wall_s: float
    samples: int | None
    workload_pct: float  # of their cores the workloads got meanwhile; < 100 means contention


@dataclass
class BpfStats:
    run_time_ns: int
    run_cnt: int


def build_workload(workdir: Path) -> Path:
    binary = workdir / "burn"
    flags = ["-O0", "-fno-omit-frame-pointer"]
    subprocess.run(["gcc", *flags, "-o", str(binary), str(WORKLOAD_C)], check=True)
    return binary


def read_workload_ticks(pids: list[int]) -> int:
    """User + system clock ticks the workloads have used (/proc/<pid>/stat fields 14, 15)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total


def run_measured(
    tool: str,
    argv: list[str],
    workdir: Path,
    pattern: str,
    workloads: list[int],
    watch: Callable[[int, threading.Event], None] = lambda _pid, _done: None,
) -> Usage:
    """Run ``argv`` to its end; its rusage comes from ``os.wait4`` on its pid.

    ``watch`` runs in a thread with the tool's pid until the tool exits.
    """
    out_path, err_path = workdir / f"{tool}.out", workdir / f"{tool}.err"
    ticks = read_workload_ticks(workloads)
    done = threading.Event()
    with out_path.open("w") as out, err_path.open("w") as err:
        started = time.monotonic()
        proc = subprocess.Popen(argv, stdout=out, stderr=err)
        watcher = threading.Thread(target=watch, args=(proc.pid, done), daemon=True)
        watcher.start()
        try:
            _pid, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            done.set()
            watcher.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.monotonic() - started
    ticks = read_workload_ticks(workloads) - ticks
    text = out_path.read_text() + err_path.read_text()
    if proc.returncode != 0:
        sys.exit(f"{tool} failed with status {proc.returncode}:\n{text}")
    match = re.search(pattern, text)
    return Usage(
        tool=tool,
        cpu_s=usage.ru_utime + usage.ru_stime,
        rss_mb=usage.ru_maxrss / 1024,  # ru_maxrss is in KiB on Linux
        wall_s=wall,
        samples=int(match.group(1)) if match else None,
        workload_pct=100 * ticks / os.sysconf("SC_CLK_TCK") / wall / len(workloads),
    )


def read_bpf_stats(owner: int) -> BpfStats | None:
    """Run stats of the ``do_sample`` program whose fd process ``owner`` holds."""
    ids: set[int] = set()
    try:
        for fdinfo in Path(f"/proc/{owner}/fdinfo").iterdir():
            match = re.search(r"^prog_id:\s*(\d+)", fdinfo.read_text(), re.MULTILINE)
            if match:
                ids.add(int(match.group(1)))
    except OSError:  # the process or one of its fds is gone
        return None
    shown = subprocess.run(["bpftool", "prog", "show", "-j"], capture_output=True, text=True)
    for program in json.loads(shown.stdout or "[]"):
        if program.get("name") == PROGRAM and program["id"] in ids:
            return BpfStats(program.get("run_time_ns", 0), program.get("run_cnt", 0))
    return None


def profile_emberscope(
    pids: list[int], args: argparse.Namespace, workdir: Path, duration: str
) -> tuple[Usage, BpfStats | None]:
    """Run emberscope with BPF run stats on, keeping the last reading before it exits."""
    last: list[BpfStats] = []

    def poll(owner: int, done: threading.Event) -> None:
        while not done.wait(1.0):
            stats = read_bpf_stats(owner)
            if stats is not None:
                last[:] = [stats]

    argv = [str(EMBERSCOPE), "profile", *[f"--pid={p}" for p in pids]]
    argv += ["--duration", duration, "--sample-rate", str(args.rate)]
    argv += ["--output", str(workdir / "emberscope.pb.gz")]
    old = BPF_STATS.read_text().strip()
    BPF_STATS.write_text("1")
    try:
        pattern = r"wrote .*?: (\d+) samples"
        usage = run_measured("emberscope", argv, workdir, pattern, pids, poll)
    finally:
        BPF_STATS.write_text(old)
    return usage, (last[0] if last else None)


def profile_perf(pids: list[int], args: argparse.Namespace, workdir: Path) -> Usage:
    # Attach mode (-p) like emberscope's --pid; only the record step is measured.
    argv = ["perf", "record", "-F", str(args.rate), "-g", "-p", ",".join(map(str, pids))]
    argv += ["-o", str(workdir / "perf.data"), "--", "sleep", str(args.seconds)]
    return run_measured("perf", argv, workdir, r"\((\d+) samples\)", pids)


def format_report(ember: Usage, perf: Usage, bpf: BpfStats | None, seconds: float) -> str:
    rows = [
        "| tool | CPU s | CPU % of one core | peak RSS MB | wall s | samples | workloads' CPU % |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for u in (ember, perf):
        samples = "n/a" if u.samples is None else str(u.samples)
        rows.append(
            f"| {u.tool} | {u.cpu_s:.3f} | {100 * u.cpu_s / seconds:.3f} | "
            f"{u.rss_mb:.1f} | {u.wall_s:.1f} | {samples} | {u.workload_pct:.0f} |"
        )
    cpu_ratio = f"{ember.cpu_s / perf.cpu_s:.2f}" if perf.cpu_s else "n/a (perf used 0 s)"
    lines = ["\n".join(rows), ""]
    lines.append(f"emberscope / perf: CPU {cpu_ratio}, RSS {ember.rss_mb / perf.rss_mb:.2f}")
    if bpf is not None and bpf.run_cnt:
        lines.append(
            f"BPF {PROGRAM}: {bpf.run_time_ns / bpf.run_cnt:.0f} ns/sample over "
            f"{bpf.run_cnt} runs ({bpf.run_time_ns} ns in all)"
        )
    else:
        lines.append(f"BPF {PROGRAM}: no run stats were read")
    if min(ember.workload_pct, perf.workload_pct) < 90:
        lines.append("note: the workloads got under 90% of their cores: other load on this machine")
    return "\n".join(lines)


def steady_state_pct(ember: Usage, short: Usage, seconds: float) -> float:
    """CPU % of one core once running: the long run less the 1 s run, per second."""
    return 100 * max(ember.cpu_s - short.cpu_s, 0.0) / (seconds - 1)


def format_steady_state(ember: Usage, short: Usage, seconds: float) -> str:
    return (
        f"emberscope start-up and exit (a 1 s run): {short.cpu_s:.3f} CPU s; "
        f"steady state: {steady_state_pct(ember, short, seconds):.3f} % of one core"
    )


def format_targets(ember: Usage, short: Usage, bpf: BpfStats | None, seconds: float) -> str:
    def mark(name: str, value: float | None, limit: float, unit: str) -> str:
        if value is None:
            return f"- {name}: not measured (target ≤ {limit:g} {unit})"
        verdict = "met" if value <= limit else "NOT met"
        return f"- {name}: {value:.3g} {unit}, {verdict} (target ≤ {limit:g} {unit})"

    us = bpf.run_time_ns / bpf.run_cnt / 1000 if bpf is not None and bpf.run_cnt else None
    cpu = mark("agent CPU", 100 * ember.cpu_s / seconds, TARGET_CPU_PCT, "% of one CPU")
    steady = steady_state_pct(ember, short, seconds)
    cpu += "\n" + mark("agent CPU, steady state", steady, TARGET_CPU_PCT, "% of one CPU")
    rss = mark("agent peak RSS", ember.rss_mb, TARGET_RSS_MB, "MB")
    return f"{cpu}\n{rss}\n{mark('BPF cost', us, TARGET_BPF_US, 'µs/sample')}"


def write_results(report: str, targets: str, args: argparse.Namespace) -> None:
    argv = [".venv/bin/python", "bench/overhead.py", *sys.argv[1:]]
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    section = (
        "# Overhead results\n\n"
        "Written by `bench/overhead.py --write-results`; see `bench/README.md`.\n\n"
        f"- Date: {now}\n- Machine: {describe_machine()}\n"
        f"- Command: `{' '.join(argv)}`, which runs, one after the other,\n"
        f"  `emberscope profile --pid A --pid B --duration {args.duration} "
        f"--sample-rate {args.rate}` and\n"
        f"  `perf record -F {args.rate} -g -p A,B -- sleep {args.seconds:g}`\n\n"
        "CPU % is CPU seconds (user + sys, from `wait4`) over the profiling duration,\n"
        "start-up and writing included. MB are MiB of peak RSS (`ru_maxrss`).\n\n"
        f"{report}\n\n## Targets\n\n{targets}\n"
    )
    write_section(section)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", default="30s", help="profiling time per tool (default 30s)")
    parser.add_argument("--rate", type=int, default=97, help="samples per second (default 97)")
    parser.add_argument("--write-results", action="store_true", help=f"rewrite {RESULTS.name}")
    args = parser.parse_args()
    args.seconds = parse_duration(args.duration)
    if os.geteuid() != 0:
        sys.exit("overhead.py needs root (BPF, perf and kernel.bpf_stats_enabled)")
    # SIGTERM unwinds like Ctrl-C, so the workloads are still killed.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(143))

    workloads: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="emberscope-bench-") as tmp:
        workdir = Path(tmp)
        try:
            binary = build_workload(workdir)
            workloads = [subprocess.Popen([str(binary)]) for _ in range(2)]
            pids = [w.pid for w in workloads]
            print(f"workloads {pids}; profiling each tool for {args.duration}", file=sys.stderr)
            ember, bpf = profile_emberscope(pids, args, workdir, args.duration)
            # The same run cut to 1 s: what starting and stopping cost alone.
            short, _ = profile_emberscope(pids, args, workdir, "1s")
            perf = profile_perf(pids, args, workdir)
        finally:
            for w in workloads:
                w.kill()
                w.wait()
    report = format_report(ember, perf, bpf, args.seconds)
    report += "\n" + format_steady_state(ember, short, args.seconds)
    targets = format_targets(ember, short, bpf, args.seconds)
    print(f"{report}\n\n{targets}")
    if args.write_results:
        write_results(report, targets, args)
        print(f"wrote {RESULTS.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
