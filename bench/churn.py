"""The agent under process churn: RSS, pid map entries and drops over time.

Runs ``emberscope run`` (discovery.process kept to a workload folder,
pyroscope.ebpf, pyroscope.file in a temporary directory) while short-lived
processes of 30-200 ms of CPU come and go, about 1000 a minute, for
``--minutes``; every ``--every`` seconds it reads the agent's RSS and CPU from
/proc, its pid map entries and drops from /metrics, and counts the dead pids
left in the pid map (bpftool). Prints a time series and a summary (first
against last third), and the log's tracebacks. Run as root:
``.venv/bin/python bench/churn.py [--minutes 10]``.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.agent import RunningAgent, run_agent  # noqa: E402
from tests.test_busy_node import pid_map_keys, process_config  # noqa: E402

CHURN_C = ROOT / "tests" / "workloads" / "churn.c"
MIN_US, MAX_US = 30_000, 200_000
BATCH_S = 3.0  # the churn is started in batches, one per BATCH_S
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Reading:
    t_s: float
    load: float  # the machine's 1-minute load average
    rss_mb: float
    agent_cpu_pct: float  # of one core since the previous reading
    pid_entries: int
    dead_entries: int
    unwind_mappings: int
    drops: dict[str, float]
    samples: float
    spawned_per_min: float  # children started since the previous reading, a minute


class Churn:
    """Starts ``churn`` batches so that ``per_minute`` children start each minute,
    as far as the CPUs allow; counts the children and their CPU time (wait4)."""

    def __init__(self, binary: Path, per_minute: int, parallel: int) -> None:
        self._binary = binary
        self._batch = max(1, round(per_minute * BATCH_S / 60))
        self._parallel = parallel
        self._stop = threading.Event()
        self._current: subprocess.Popen | None = None
        self.children = 0
        self.children_cpu_s = 0.0
        self._thread = threading.Thread(target=self._run, name="churn")

    def start(self) -> None:
        self._thread.start()

    def stop(self, finish: bool = False) -> None:
        """Stop starting batches; ``finish``: let the one running end and count it."""
        self._stop.set()
        current = self._current
        if not finish and current is not None and current.poll() is None:
            os.killpg(current.pid, signal.SIGTERM)
        self._thread.join()

    def _run(self) -> None:
        deadline = time.monotonic()
        while not self._stop.is_set():
            deadline += BATCH_S
            args = [self._batch, MIN_US, MAX_US, self._parallel]
            self._current = subprocess.Popen(
                [str(self._binary), *map(str, args)],
                stdout=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
            out, _ = self._current.communicate()
            if "cpu_us=" in out:
                self.children += self._batch
                self.children_cpu_s += int(out.split("cpu_us=")[1]) / 1e6
            self._stop.wait(max(0.0, deadline - time.monotonic()))


def process_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def dead_pids(agent_pid: int) -> int:
    """Entries of the pid map whose process is gone, seen twice 1 s apart
    (a process may exit between the dump and the check)."""
    dead = {pid for pid in pid_map_keys(agent_pid) if not os.path.exists(f"/proc/{pid}")}
    if not dead:
        return 0
    time.sleep(1)
    return len(dead & set(pid_map_keys(agent_pid)))


def read(agent: RunningAgent, started: float, cpu_pct: float, spawned_per_min: float) -> Reading:
    pid = agent.process.pid
    metrics = agent.metrics()

    def value(name: str, **labels: str) -> float:
        return sum(
            s.value for s in metrics if s.name == name and labels.items() <= s.labels.items()
        )

    drops: dict[str, float] = {}
    for s in metrics:
        if s.name == "emberscope_ebpf_samples_dropped_total":
            drops[s.labels["reason"]] = s.value
    return Reading(
        t_s=time.monotonic() - started,
        load=os.getloadavg()[0],
        rss_mb=rss_mb(pid),
        agent_cpu_pct=cpu_pct,
        pid_entries=int(value("emberscope_ebpf_map_entries", map="pids")),
        dead_entries=dead_pids(pid),
        unwind_mappings=int(value("emberscope_ebpf_map_entries", map="unwind_mappings")),
        drops=drops,
        samples=value("emberscope_ebpf_samples_total"),
        spawned_per_min=spawned_per_min,
    )


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (x, y) points; 0 for fewer than two."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    var = sum((x - mean_x) ** 2 for x, _ in points)
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / var if var else 0.0


def print_series(readings: list[Reading]) -> None:
    reasons = sorted({r for reading in readings for r in reading.drops})
    print(
        "| t s | load | RSS MB | agent CPU % | pid map entries | dead | unwind mappings | samples "
        "| spawned/min | drops (" + ", ".join(reasons) + ") |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in readings:
        drops = ", ".join(f"{r.drops.get(reason, 0):.0f}" for reason in reasons)
        print(
            f"| {r.t_s:.0f} | {r.load:.1f} | {r.rss_mb:.1f} | {r.agent_cpu_pct:.1f} "
            f"| {r.pid_entries} | {r.dead_entries} | {r.unwind_mappings} | {r.samples:.0f} "
            f"| {r.spawned_per_min:.0f} | {drops} |"
        )


def print_summary(readings: list[Reading]) -> None:
    third = max(1, len(readings) // 3)
    parts = {"first third": readings[:third], "last third": readings[-third:]}
    print("\n| part | readings | RSS MB mean | RSS MB min-max | pid entries max | dead max |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, part in parts.items():
        rss = [r.rss_mb for r in part]
        print(
            f"| {name} | {len(part)} | {sum(rss) / len(rss):.1f} | {min(rss):.1f}-{max(rss):.1f} "
            f"| {max(r.pid_entries for r in part)} | {max(r.dead_entries for r in part)} |"
        )
    whole = [(r.t_s / 60, r.rss_mb) for r in readings]
    past_warmup = whole[third:]
    print(
        f"\nRSS slope: {slope(whole):+.2f} MB/min over the run, "
        f"{slope(past_warmup):+.2f} MB/min after the first third"
    )


def observe(agent: RunningAgent, churn: Churn, minutes: float, every: float) -> list[Reading]:
    """Run the churn for ``minutes``, reading the agent every ``every`` seconds."""
    pid = agent.process.pid
    readings: list[Reading] = []
    started = time.monotonic()
    last, cpu, spawned = started, process_cpu_s(pid), 0
    churn.start()
    try:
        end, due = started + minutes * 60, started
        while due < end - 1:
            due = min(due + every, end)
            time.sleep(max(0.0, due - time.monotonic()))
            now, now_cpu, children = time.monotonic(), process_cpu_s(pid), churn.children
            cpu_pct = (now_cpu - cpu) * 100 / (now - last)
            reading = read(agent, started, cpu_pct, (children - spawned) * 60 / (now - last))
            last, cpu, spawned = now, now_cpu, children
            readings.append(reading)
            print(
                f"t={reading.t_s:.0f}s load={reading.load:.1f} rss={reading.rss_mb:.1f}MB "
                f"cpu={cpu_pct:.1f}% pids={reading.pid_entries} dead={reading.dead_entries} "
                f"unwind_mappings={reading.unwind_mappings} drops={reading.drops}",
                flush=True,
            )
    finally:
        churn.stop()
    return readings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--per-minute", type=int, default=1000, help="children started a minute")
    parser.add_argument("--parallel", type=int, default=4, help="children alive at once, at most")
    parser.add_argument("--every", type=float, default=30.0, help="seconds between readings")
    parser.add_argument("--rate", type=int, default=97, help="the agent's sample_rate")
    parser.add_argument("--pid-map-size", type=int, default=2048)
    args = parser.parse_args()
    # SIGTERM unwinds like Ctrl-C: the churn and the agent are stopped on the way out
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    with tempfile.TemporaryDirectory(prefix="emberscope-churn-") as tmp:
        folder = Path(tmp)
        workloads = folder / "workloads"
        workloads.mkdir()
        binary = workloads / "churn"
        subprocess.run(
            ["gcc", "-O0", "-fno-omit-frame-pointer", "-o", str(binary), str(CHURN_C)], check=True
        )
        config = process_config(workloads, folder / "out", args.rate, args.pid_map_size)
        churn = Churn(binary, args.per_minute, args.parallel)
        with run_agent(config, folder) as agent:
            agent.wait_for_metrics()
            print(
                f"agent pid {agent.process.pid}, {args.per_minute} children/min of "
                f"{MIN_US // 1000}-{MAX_US // 1000} ms CPU, {args.minutes:g} min, "
                f"reading every {args.every:g} s",
                flush=True,
            )
            readings = observe(agent, churn, args.minutes, args.every)
        log = agent.log  # after the agent stopped: its shutdown is in it
    print(
        f"\n{churn.children} children in {args.minutes:g} min "
        f"({churn.children / args.minutes:.0f} a minute), "
        f"{churn.children_cpu_s:.0f} CPU s (wait4)\n"
    )
    print_series(readings)
    print_summary(readings)
    tracebacks = log.count("Traceback")
    print(f"\nTracebacks in the agent's log: {tracebacks}; log lines: {log.count(chr(10))}")
    if tracebacks:
        print(log[log.index("Traceback") :][:3000])
    complaints = [line for line in log.splitlines() if re.search("level=(WARNING|ERROR)", line)]
    print(f"Warnings and errors: {len(complaints)}", *complaints[:20], sep="\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
