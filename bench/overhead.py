"""Overhead of ``emberscope profile`` beside ``perf record`` on two busy processes.

Run as root: ``make bench`` (or ``.venv/bin/python bench/overhead.py --help``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from agent.config import parse_duration

ROOT = Path(__file__).resolve().parents[1]
EMBERSCOPE = ROOT / ".venv" / "bin" / "emberscope"
RESULTS = ROOT / "bench" / "RESULTS.md"
BPF_STATS = Path("/proc/sys/kernel/bpf_stats_enabled")
PROGRAM = "do_sample"
# The design's targets for the agent, listed in bench/README.md.
TARGET_CPU_PCT, TARGET_RSS_MB, TARGET_BPF_US = 0.5, 80.0, 3.0

# Three call chains of different weight, so a profile has something to show.
WORKLOAD_C = r"""
static volatile unsigned long sink;
static void leaf_hash(int n) {
    unsigned long h = 5381;
    for (int i = 0; i < n; i++) h = h * 33 + i;
    sink += h;
}
static void leaf_mul(int n) {
    unsigned long p = 1;
    for (int i = 1; i < n; i++) p *= i | 1;
    sink += p;
}
static void middle(int n) { leaf_mul(n); leaf_hash(n / 2); }
static void chain_a(void) { leaf_hash(200000); }
static void chain_b(void) { middle(200000); }
static void chain_c(void) { for (int i = 0; i < 4; i++) middle(50000); }
int main(void) { for (;;) { chain_a(); chain_b(); chain_c(); } }
"""


@dataclass
class Usage:
    """What one tool's run cost: CPU seconds (user + sys), peak RSS and its report."""

    tool: str
    cpu_s: float
    rss_mb: float
    wall_s: float
    samples: int | None


@dataclass
class BpfStats:
    run_time_ns: int
    run_cnt: int


def build_workload(workdir: Path) -> Path:
    source, binary = workdir / "burn.c", workdir / "burn"
    source.write_text(WORKLOAD_C)
    subprocess.run(
        ["gcc", "-O0", "-fno-omit-frame-pointer", "-o", str(binary), str(source)], check=True
    )
    return binary


def run_measured(tool: str, argv: list[str], workdir: Path, pattern: str) -> Usage:
    """Run ``argv`` to its end; its rusage comes from ``os.wait4`` on its pid."""
    out_path, err_path = workdir / f"{tool}.out", workdir / f"{tool}.err"
    with out_path.open("w") as out, err_path.open("w") as err:
        started = time.monotonic()
        proc = subprocess.Popen(argv, stdout=out, stderr=err)
        try:
            _pid, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.monotonic() - started
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
    )


def read_bpf_stats(exclude: set[int]) -> tuple[BpfStats | None, set[int]]:
    """The newest ``do_sample`` program not in ``exclude``, and every id seen."""
    shown = subprocess.run(["bpftool", "prog", "show", "-j"], capture_output=True, text=True)
    programs = json.loads(shown.stdout or "[]")
    ids = {p["id"] for p in programs if p.get("name") == PROGRAM}
    ours = [p for p in programs if p.get("name") == PROGRAM and p["id"] not in exclude]
    if not ours:
        return None, ids
    newest = max(ours, key=lambda p: p["id"])
    return BpfStats(newest.get("run_time_ns", 0), newest.get("run_cnt", 0)), ids


def profile_emberscope(
    pids: list[int], args: argparse.Namespace, workdir: Path
) -> tuple[Usage, BpfStats | None]:
    """Run emberscope with BPF run stats on, polling them until it exits."""
    _stats, before = read_bpf_stats(set())
    last: list[BpfStats] = []
    done = threading.Event()

    def poll() -> None:
        while not done.wait(1.0):
            stats, _ids = read_bpf_stats(before)
            if stats is not None:
                last[:] = [stats]

    old = BPF_STATS.read_text().strip()
    BPF_STATS.write_text("1")
    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        argv = [str(EMBERSCOPE), "profile", *[f"--pid={p}" for p in pids]]
        argv += ["--duration", args.duration, "--sample-rate", str(args.rate)]
        argv += ["--output", str(workdir / "emberscope.pb.gz")]
        usage = run_measured("emberscope", argv, workdir, r"wrote .*?: (\d+) samples")
    finally:
        done.set()
        poller.join()
        BPF_STATS.write_text(old)
    return usage, (last[0] if last else None)


def profile_perf(pids: list[int], args: argparse.Namespace, workdir: Path) -> Usage:
    # Attach mode (-p) like emberscope's --pid; only the record step is measured.
    argv = ["perf", "record", "-F", str(args.rate), "-g", "-p", ",".join(map(str, pids))]
    argv += ["-o", str(workdir / "perf.data"), "--", "sleep", str(args.seconds)]
    return run_measured("perf", argv, workdir, r"\((\d+) samples\)")


def format_report(ember: Usage, perf: Usage, bpf: BpfStats | None, seconds: float) -> str:
    rows = [
        "| tool | CPU s | CPU % of one core | peak RSS MB | wall s | samples |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for u in (ember, perf):
        samples = "n/a" if u.samples is None else str(u.samples)
        rows.append(
            f"| {u.tool} | {u.cpu_s:.3f} | {100 * u.cpu_s / seconds:.3f} | "
            f"{u.rss_mb:.1f} | {u.wall_s:.1f} | {samples} |"
        )
    lines = ["\n".join(rows), ""]
    cpu_ratio = f"{ember.cpu_s / perf.cpu_s:.2f}" if perf.cpu_s else "n/a (perf used 0 s)"
    lines.append(f"emberscope / perf: CPU {cpu_ratio}, RSS {ember.rss_mb / perf.rss_mb:.2f}")
    if bpf is not None and bpf.run_cnt:
        lines.append(
            f"BPF {PROGRAM}: {bpf.run_time_ns / bpf.run_cnt:.0f} ns/sample over "
            f"{bpf.run_cnt} runs ({bpf.run_time_ns} ns in all)"
        )
    else:
        lines.append(f"BPF {PROGRAM}: no run stats were read")
    return "\n".join(lines)


def format_targets(ember: Usage, bpf: BpfStats | None, seconds: float) -> str:
    def mark(name: str, value: float | None, limit: float, unit: str) -> str:
        if value is None:
            return f"- {name}: not measured (target ≤ {limit:g} {unit})"
        verdict = "met" if value <= limit else "NOT met"
        return f"- {name}: {value:.3g} {unit}, {verdict} (target ≤ {limit:g} {unit})"

    us = bpf.run_time_ns / bpf.run_cnt / 1000 if bpf is not None and bpf.run_cnt else None
    cpu_pct = 100 * ember.cpu_s / seconds
    return "\n".join(
        (
            mark("agent CPU", cpu_pct, TARGET_CPU_PCT, "% of one CPU"),
            mark("agent peak RSS", ember.rss_mb, TARGET_RSS_MB, "MB"),
            mark("BPF cost", us, TARGET_BPF_US, "µs/sample"),
        )
    )


def describe_machine() -> str:
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return f"Linux {platform.release()}, {os.cpu_count()} CPUs, {model}"


def write_results(report: str, targets: str, args: argparse.Namespace) -> None:
    argv = [".venv/bin/python", "bench/overhead.py", *sys.argv[1:]]
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    RESULTS.write_text(
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
            ember, bpf = profile_emberscope(pids, args, workdir)
            perf = profile_perf(pids, args, workdir)
        finally:
            for w in workloads:
                w.kill()
                w.wait()
    report = format_report(ember, perf, bpf, args.seconds)
    targets = format_targets(ember, bpf, args.seconds)
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
