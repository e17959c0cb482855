"""The session on the real kernel: sampling, pid decisions, events and drains."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time

import pytest

from agent.ebpf import PidEventType, PidState, Session, SessionOptions
from agent.ebpf.perf import parse_cpu_list
from tests.agent import cpu_seconds

pytestmark = pytest.mark.usefixtures("bpf_ready")


@pytest.fixture
def busy(build_workload):
    """A process burning one CPU for up to 30 s."""
    process = subprocess.Popen([str(build_workload("three_leaves")), "30"])
    yield process
    process.kill()
    process.wait()


def test_samples_only_the_pids_it_is_told_to(busy, build_workload):
    other = subprocess.Popen([str(build_workload("three_leaves")), "30"])
    try:
        with Session(SessionOptions(sample_rate=199)) as session:
            session.set_pid(busy.pid, PidState.PROFILE)
            before = cpu_seconds(busy.pid)
            time.sleep(2)
            used = cpu_seconds(busy.pid) - before
            samples = session.drain()
    finally:
        other.kill()
        other.wait()
    pids = {sample.pid for sample in samples}
    assert pids == {busy.pid}
    total = sum(sample.count for sample in samples)
    # the cpu-clock event fires 199 times per second of CPU the process uses
    assert total == pytest.approx(used * 199, rel=0.15)
    assert all(sample.user_stack for sample in samples)


def test_drains_lose_and_double_count_nothing(busy):
    """Draining while the kernel samples: every recorded sample comes out exactly once."""
    drained = 0
    with Session(SessionOptions(sample_rate=997)) as session:
        session.set_pid(busy.pid, PidState.PROFILE)
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            drained += sum(sample.count for sample in session.drain())
        busy.kill()
        busy.wait()
        drained += sum(sample.count for sample in session.drain())
        recorded = session.read_sample_total()
        drops = session.read_drops()
    assert recorded > 1000
    assert drained == recorded
    assert drops["counts_map_full"] == 0


def test_kernel_and_user_stacks_follow_the_pid_config(build_workload):
    process = subprocess.Popen([str(build_workload("syscalls")), "30"])
    try:
        with Session(SessionOptions(sample_rate=499)) as session:
            session.set_pid(process.pid, PidState.PROFILE, collect_user=False, collect_kernel=True)
            time.sleep(1)
            kernel_only = session.drain()
            session.set_pid(process.pid, PidState.PROFILE, collect_user=True, collect_kernel=False)
            time.sleep(0.2)
            session.drain()  # samples taken while the switch happened
            time.sleep(1)
            user_only = session.drain()
    finally:
        process.kill()
        process.wait()
    assert any(sample.kernel_stack for sample in kernel_only)
    assert not any(sample.user_stack for sample in kernel_only)
    assert all(
        sample.kernel_stack[0] >= 0xFFFF800000000000
        for sample in kernel_only
        if sample.kernel_stack
    )
    assert all(sample.user_stack for sample in user_only)
    assert not any(sample.kernel_stack for sample in user_only)


def test_ignored_pid_is_not_sampled(busy):
    with Session(SessionOptions(sample_rate=499)) as session:
        session.set_pid(busy.pid, PidState.IGNORE)
        time.sleep(1)
        assert session.drain() == []
        assert session.read_sample_total() == 0


def test_new_processes_are_reported_with_their_parent_and_exits_follow(build_workload):
    options = SessionOptions(sample_rate=499, discover_new=True)
    with Session(options) as session:
        session.poll_events(0)
        child = subprocess.Popen([str(build_workload("three_leaves")), "1"])
        events = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any(
            e.pid == child.pid and e.type is PidEventType.EXIT for e in events
        ):
            events += session.poll_events(100)
        _, _, usage = os.wait4(child.pid, 0)
        child.returncode = 0
        events += session.poll_events(100)  # exited after the deadline: its event is queued
        samples = session.drain()
        drops = session.read_drops()
    mine = [e for e in events if e.pid == child.pid]
    assert [e.type for e in mine][0] is PidEventType.NEW
    assert mine[0].ppid == os.getpid()
    assert mine[-1].type is PidEventType.EXIT, (mine, drops, len(events))
    # pending samples are kept until userspace decides
    used = usage.ru_utime + usage.ru_stime
    kept = sum(s.count for s in samples if s.pid == child.pid)
    assert kept == pytest.approx(used * 499, rel=0.15)


def _bpftool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bpftool", "-j", *args], capture_output=True, text=True)


def test_pid_map_size_is_applied_before_load():
    with Session(SessionOptions(pid_map_size=333)) as session:
        program = json.loads(_bpftool("prog", "show", "id", str(session.program_id)).stdout)
        maps = json.loads(_bpftool("map", "show").stdout)
        assert session.cpus == parse_cpu_list(open("/sys/devices/system/cpu/online").read())
    sizes = {m["name"]: m["max_entries"] for m in maps if m["id"] in program["map_ids"]}
    assert sizes["pids"] == 333
    assert program["type"] == "perf_event"


def test_close_detaches_everything():
    session = Session(SessionOptions())
    session.open()
    program_id = session.program_id
    assert _bpftool("prog", "show", "id", str(program_id)).returncode == 0
    session.close()
    assert _bpftool("prog", "show", "id", str(program_id)).returncode != 0


def test_close_on_a_failed_open_leaves_nothing_behind(tmp_path):
    broken = tmp_path / "broken.bpf.o"
    broken.write_bytes(b"\x7fELF not really")
    session = Session(SessionOptions(object_path=broken))
    with pytest.raises(Exception, match="bpf_object__open_file"):
        session.open()
    session.close()


def test_session_can_run_in_a_thread_and_be_closed_twice():
    errors = []

    def work():
        try:
            with Session(SessionOptions()) as session:
                session.drain()
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(30)
    assert errors == []


@pytest.mark.parametrize(
    ("text", "cpus"),
    [("0", [0]), ("0-3", [0, 1, 2, 3]), ("0-1,4,6-7\n", [0, 1, 4, 6, 7])],
)
def test_cpu_lists_parse(text, cpus):
    assert parse_cpu_list(text) == cpus


def test_a_bad_cpu_list_names_the_part():
    with pytest.raises(ValueError, match="'x-2'"):
        parse_cpu_list("0,x-2")


def test_map_fill_counts_the_pid_map_and_the_buffer_being_filled(busy):
    with Session(SessionOptions(pid_map_size=64, sample_rate=499)) as session:
        for pid in (busy.pid, 1, 2):
            session.set_pid(pid, PidState.IGNORE if pid != busy.pid else PidState.PROFILE)
        time.sleep(1)
        fill = session.read_map_fill()
        drained = session.drain()
        after = session.read_map_fill()
    assert fill["pids"] == (3, 64)
    assert fill["counts"][0] == len(drained) > 0
    assert fill["counts"][1] == 16384 and fill["stacks"][1] == 16384
    assert fill["stacks"][0] >= 1
    assert after["counts"][0] <= fill["counts"][0]


def test_stack_maps_take_memory_as_stacks_come(busy):
    """The stack maps allocate an entry per unique stack (1 KiB each): empty, they
    hold a fraction of what 16384 preallocated values would (17 MiB each)."""
    with Session(SessionOptions(sample_rate=997)) as session:
        empty = session.read_map_memory()
        session.set_pid(busy.pid, PidState.PROFILE)
        time.sleep(0.5)
        used = session.read_map_memory()
    assert empty["counts_0"] > 1 << 20  # preallocated: written on every sample
    assert empty["stacks_0"] < 1 << 20 and empty["stacks_1"] < 1 << 20
    assert used["stacks_0"] + used["stacks_1"] > empty["stacks_0"] + empty["stacks_1"]
