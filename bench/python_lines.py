"""What keeping Python line tables costs, done either way issue 15 offered.

Kernel copy (what Emberscope does): the BPF program sends each new code
object's line table on the py_lines ring. Measured: do_sample's run time per
sample for a workload whose samples keep meeting new code objects, with this
object and with one built without the copy (``--without OBJECT``: bpf/ with
the ``send_line_table`` call removed), and userspace's CPU time per table
received. Userspace read (the alternative): reading each reported code
object's table through ``/proc/<pid>/mem``, which also checks that the
kernel's copies are the process's own tables.

Run as root: `.venv/bin/python bench/python_lines.py --without /tmp/nolines.bpf.o`.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bpf_cost import STATS, program_stats  # noqa: E402

from agent.ebpf import PidState, PythonLineTable, Session, SessionOptions  # noqa: E402
from agent.ebpf.session import DEFAULT_OBJECT_PATH  # noqa: E402
from agent.python import PythonProcesses  # noqa: E402
from agent.python.interpreter import InterpreterFinder  # noqa: E402
from agent.python.objects import ProcessMemory  # noqa: E402

# A new function every millisecond or so, kept alive so its table can be read later.
WORKLOAD = """
SOURCE = "def f_{i}(n):\\n    t = 0\\n    for k in range(n):\\n        t += k * k\\n    return t\\n"
kept = []
i = 0
while True:
    space = {}
    exec(SOURCE.format(i=i), space)
    space["f_%d" % i](5000)
    kept.append(space)
    i += 1
"""
RATE = 97


def kernel_cost(
    python: str, script: Path, object_path: Path, seconds: float
) -> tuple[float, int, list[PythonLineTable], int]:
    """ns per sample, samples, the tables received and the workload's pid (stopped)."""
    workload = subprocess.Popen([python, str(script)])
    time.sleep(1.0)
    options = SessionOptions(sample_rate=RATE, python_enabled=True, object_path=object_path)
    with Session(options) as session:
        processes = PythonProcesses(session, 1 << 16)
        session.set_pid(workload.pid, PidState.PROFILE)
        processes.add(workload.pid)
        time.sleep(0.5)
        session.poll_events(0)
        session.take_line_tables()
        before = program_stats(session.program_id)
        tables: list[PythonLineTable] = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            session.poll_events(100)
            tables.extend(session.take_line_tables())
        after = program_stats(session.program_id)
        os.kill(workload.pid, signal.SIGSTOP)
        session.poll_events(0)
        tables.extend(session.take_line_tables())
    runs = after[1] - before[1]
    return (after[0] - before[0]) / max(runs, 1), runs, tables, workload.pid


def read_cost(pid: int, tables: list[PythonLineTable]) -> tuple[float, int]:
    """µs per table read from the stopped process, and how many differ from the kernel's."""
    offsets = InterpreterFinder().find(pid).offsets
    differ = 0
    started = time.perf_counter()
    for table in tables:
        with ProcessMemory(pid) as memory:  # one open per reported code object
            pointer = memory.read_pointer(table.code + offsets.code_linetable)
            own = memory.read_bytes_object(pointer)
        differ += own[: len(table.table)] != table.table
    elapsed = time.perf_counter() - started
    return elapsed * 1e6 / max(len(tables), 1), differ


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--python", default=sys.executable, help="the interpreter profiled")
    parser.add_argument("--without", type=Path, required=True, help="object without the copy")
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    print(f"{args.python}, a new function about every millisecond, {RATE} Hz")
    old = STATS.read_text().strip()
    STATS.write_text("1")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            script = Path(tmp) / "churn.py"
            script.write_text(WORKLOAD)
            print("\n| BPF object | ns per sample | samples | tables received |")
            print("|---|---:|---:|---:|")
            for label, path in (("without the copy", args.without), ("with", DEFAULT_OBJECT_PATH)):
                ns, runs, tables, pid = kernel_cost(args.python, script, path, args.seconds)
                try:
                    print(f"| {label} | {ns:.0f} | {runs} | {len(tables)} |")
                    if tables:
                        read_us, differ = read_cost(pid, tables)
                finally:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
            cut = sum(table.cut for table in tables)
            print(f"\ntables cut: {cut} of {len(tables)}; differing from the process's: {differ}")
            print(f"userspace read through /proc/<pid>/mem: {read_us:.1f} µs per code object")
    finally:
        STATS.write_text(old)
    return 0


if __name__ == "__main__":
    sys.exit(main())
