"""What walking Python stacks costs, in the kernel and in userspace.

Kernel: the sampling program's average run time per sample (bpf stats; the
tail-called walk_python is counted in do_sample's run), for the same busy
Python processes with the unwinder on and off, at two stack depths.
Userspace: CPU time of Profiler.collect() per sample, the first collection
(cold caches) and the median of the following ones (warm).

Run as root: `.venv/bin/python bench/python_cost.py [--python PATH] [--object PATH]`.
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

from agent.ebpf import DEFAULT_OBJECT_PATH, PidState, Session, SessionOptions  # noqa: E402
from agent.pprof import ProfileBuilder  # noqa: E402
from agent.profiler import ProcessProfile, Profiler  # noqa: E402
from agent.python import PythonProcesses  # noqa: E402
from agent.symbols import Symbolizer  # noqa: E402

WORKLOAD = """
import sys

def work(n):
    total = 0
    for i in range(n):
        total += i * i
    return total

def recurse(depth):
    if depth == 0:
        while True:
            work(1000)
    return recurse(depth - 1)

def chain(depth):  # as deep as recurse(depth), each frame a function of its own
    last = depth - 2  # chain itself and f0 .. f{last} stand for depth + 1 frames
    source = "".join(f"def f{i}():\\n    return f{i + 1}()\\n" for i in range(last))
    exec(source + f"def f{last}():\\n    return recurse(0)\\n", globals())
    globals()["f0"]()

(chain if sys.argv[2:] == ["distinct"] else recurse)(int(sys.argv[1]))
"""
RATE = 97
COLLECTIONS = 7


def start(
    python: str, script: Path, depth: int, count: int, distinct: bool = False
) -> list[subprocess.Popen]:
    """``count`` processes looping under ``depth`` frames of one recursion
    (or, ``distinct``, of as many functions)."""
    args = [python, str(script), str(depth), *(["distinct"] if distinct else [])]
    workloads = [subprocess.Popen(args) for _ in range(count)]
    time.sleep(1.0)  # past start-up: the interpreter and its key are ready
    return workloads


def stop(workloads: list[subprocess.Popen]) -> None:
    for workload in workloads:
        workload.kill()
        workload.wait()


def kernel_cost(
    pids: list[int], python: bool, seconds: float, object_path: Path
) -> tuple[float, int]:
    """ns per sample of do_sample (walk_python included) and the samples counted."""
    options = SessionOptions(sample_rate=RATE, python_enabled=python, object_path=object_path)
    with Session(options) as session:
        processes = PythonProcesses(session, 16384) if python else None
        for pid in pids:
            session.set_pid(pid, PidState.PROFILE)
            if processes is not None:
                processes.add(pid)
        time.sleep(0.5)
        session.drain()
        before = program_stats(session.program_id)
        time.sleep(seconds)
        after = program_stats(session.program_id)
        runs = after[1] - before[1]
        return (after[0] - before[0]) / max(runs, 1), runs


def userspace_cost(pids: list[int], python: bool, seconds: float) -> list[tuple[float, int, int]]:
    """(CPU seconds, samples, new stacks) of each of COLLECTIONS collections."""
    rows = []
    with Session(SessionOptions(sample_rate=RATE, python_enabled=python)) as session:
        with Symbolizer() as symbolizer:
            builder = ProfileBuilder(RATE, time_nanos=time.time_ns())
            destination = ProcessProfile(builder)
            processes = PythonProcesses(session, 16384) if python else None
            profiler = Profiler(session, symbolizer, lambda _process: [], processes)
            for pid in pids:
                profiler.add(pid, [destination])
            for _ in range(COLLECTIONS):
                time.sleep(seconds)
                stacks_before = len(builder)
                started = time.process_time()
                samples = profiler.collect()
                rows.append((time.process_time() - started, samples, len(builder) - stacks_before))
    return rows


def compare(
    python: str, script: Path, objects: list[Path], rounds: int, seconds: float, distinct: bool
) -> dict[Path, list[float]]:
    """ns per sample of each object at 53 Python frames, measured in turn
    ``rounds`` times: load from other work on the machine hits each alike."""
    found: dict[Path, list[float]] = {path: [] for path in objects}
    workloads = start(python, script, 50, 2, distinct)
    try:
        pids = [w.pid for w in workloads]
        for _ in range(rounds):
            for path in objects:
                found[path].append(kernel_cost(pids, True, seconds, path)[0])
    finally:
        stop(workloads)
    return found


def print_comparison(found: dict[Path, list[float]]) -> None:
    print("\n| BPF object | ns per sample: median | lower quartile | upper quartile |")
    print("|---|---:|---:|---:|")
    for path, values in found.items():
        low, median, high = statistics.quantiles(values, n=4)
        print(f"| {path} | {median:.0f} | {low:.0f} | {high:.0f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--python", default=sys.executable, help="the interpreter profiled")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument(
        "--object", type=Path, default=DEFAULT_OBJECT_PATH, help="the BPF object measured"
    )
    parser.add_argument(
        "--compare",
        type=Path,
        nargs="+",
        help="only compare these objects (same profile.h) at 53 frames, in turns",
    )
    parser.add_argument("--rounds", type=int, default=10, help="turns of --compare")
    parser.add_argument(
        "--distinct", action="store_true", help="--compare with 50 distinct functions"
    )
    args = parser.parse_args()
    version = subprocess.run(
        [args.python, "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    print(f"{args.python} (CPython {version}), 2 busy processes, {RATE} Hz")
    old = STATS.read_text().strip()
    STATS.write_text("1")
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "work.py"
        script.write_text(WORKLOAD)
        if args.compare:
            try:
                found = compare(
                    args.python, script, args.compare, args.rounds, args.seconds, args.distinct
                )
            finally:
                STATS.write_text(old)
            print_comparison(found)
            return 0
        print("\n| Python stack depth | unwinder | ns per sample (BPF) | samples |")
        print("|---:|---|---:|---:|")
        try:
            for depth in (10, 50):
                workloads = start(args.python, script, depth, 2)
                try:
                    pids = [w.pid for w in workloads]
                    for python in (False, True):
                        ns, runs = kernel_cost(pids, python, args.seconds, args.object)
                        print(f"| {depth + 3} | {'on' if python else 'off'} | {ns:.0f} | {runs} |")
                finally:
                    stop(workloads)
        finally:
            STATS.write_text(old)
        print("\n| unwinder | collections | CPU ms per collection | samples | µs per sample |")
        print("|---|---|---:|---:|---:|")
        workloads = start(args.python, script, 10, 2)
        try:
            pids = [w.pid for w in workloads]
            for python in (False, True):
                rows = userspace_cost(pids, python, args.seconds)
                unwinder = "on" if python else "off"
                cold_cpu, cold_samples, _ = rows[0]
                print(
                    f"| {unwinder} | first (cold) | {cold_cpu * 1000:.1f} | {cold_samples} "
                    f"| {cold_cpu * 1e6 / max(cold_samples, 1):.1f} |"
                )
                warm = sorted(rows[1:], key=lambda row: row[0] / max(row[1], 1))
                cpu, samples, _ = warm[len(warm) // 2]
                print(
                    f"| {unwinder} | median of {len(warm)} (warm) | {cpu * 1000:.1f} | {samples} "
                    f"| {cpu * 1e6 / max(samples, 1):.1f} |"
                )
        finally:
            stop(workloads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
