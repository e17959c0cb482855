"""Where the BPF program's time per sample goes.

Loads the sampler, marks two busy processes as profiled, and reads the
program's run time per run (kernel.bpf_stats_enabled) for each combination
of user and kernel stack capture, at 97 Hz (caches cold between samples)
and 997 Hz (warm). Run as root: `.venv/bin/python bench/bpf_cost.py`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.ebpf import PidState, Session, SessionOptions  # noqa: E402

STATS = Path("/proc/sys/kernel/bpf_stats_enabled")
MODES = ((True, True), (True, False), (False, True), (False, False))


def program_stats(program_id: int) -> tuple[int, int]:
    """(run_time_ns, run_cnt) of the program, read from the session's own fd."""
    with open(f"/proc/self/fdinfo/{program_fd(program_id)}") as stream:
        fields = dict(line.split(":", 1) for line in stream if ":" in line)
    return int(fields.get("run_time_ns", 0)), int(fields.get("run_cnt", 0))


def program_fd(program_id: int) -> int:
    for info in Path("/proc/self/fdinfo").iterdir():
        if f"prog_id:\t{program_id}\n" in info.read_text():
            return int(info.name)
    raise LookupError(f"no fd holds BPF program {program_id}")


def measure(rate: int, seconds: float, pids: list[int]) -> list[tuple[bool, bool, float, int]]:
    rows = []
    with Session(SessionOptions(sample_rate=rate)) as session:
        for user, kernel in MODES:
            for pid in pids:
                session.set_pid(pid, PidState.PROFILE, collect_user=user, collect_kernel=kernel)
            time.sleep(0.5)  # let the previous mode's samples pass
            before = program_stats(session.program_id)
            time.sleep(seconds)
            after = program_stats(session.program_id)
            session.drain()
            runs = after[1] - before[1]
            rows.append((user, kernel, (after[0] - before[0]) / max(runs, 1), runs))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=6.0, help="per mode and rate")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        binary = Path(tmp) / "three_leaves"
        source = ROOT / "tests" / "workloads" / "three_leaves.c"
        subprocess.run(["gcc", "-O0", "-fno-omit-frame-pointer", "-o", binary, source], check=True)
        workloads = [subprocess.Popen([str(binary), "600"]) for _ in range(2)]
        old = STATS.read_text().strip()
        STATS.write_text("1")
        try:
            print("| rate Hz | user stack | kernel stack | ns per sample | runs |")
            print("|---:|---|---|---:|---:|")
            for rate in (97, 997):
                for user, kernel, ns, runs in measure(
                    rate, args.seconds, [w.pid for w in workloads]
                ):
                    print(
                        f"| {rate} | {'yes' if user else 'no'} | {'yes' if kernel else 'no'} "
                        f"| {ns:.0f} | {runs} |"
                    )
        finally:
            STATS.write_text(old)
            for workload in workloads:
                workload.kill()
                workload.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
