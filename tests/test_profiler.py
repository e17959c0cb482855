"""The profiler's decisions per pid, with a scripted session in place of the kernel."""

from __future__ import annotations

import subprocess

import pytest

from agent import profiler as profiler_module
from agent.ebpf import PidEvent, PidEventType, PidState, RawSample
from agent.profiler import ProcessSelection, Profiler
from agent.symbols import Frame, Symbolizer, resolver
from agent.symbols.procmaps import read_maps
from agent.unwind import NativeUnwinder, processes
from tests.unwind.test_processes import RecordingSession


class ScriptedSession:
    def __init__(self) -> None:
        self.events: list[PidEvent] = []
        self.counts: list[RawSample] = []
        self.states: dict[int, PidState] = {}
        self.exited: set[int] = set()  # pids the kernel no longer tracks

    def poll_events(self, timeout_ms: int = 0) -> list[PidEvent]:
        events, self.events = self.events, []
        return events

    def drain(self) -> list[RawSample]:
        counts, self.counts = self.counts, []
        return counts

    def set_pid(self, pid, state, collect_user=None, collect_kernel=None, *, tracked_only=False):
        if tracked_only and pid in self.exited:
            return False
        self.states[pid] = state
        return True


class NamingSymbolizer:
    def __init__(self) -> None:
        self.added: list[int] = []
        self.forgotten: list[int] = []

    def add_process(self, pid: int) -> list:
        self.added.append(pid)
        return []

    def forget(self, pid: int) -> None:
        self.forgotten.append(pid)

    def resolve_user(self, pid, addresses):
        return [Frame(f"user_{address:x}") for address in addresses]

    def resolve_kernel(self, addresses):
        return [Frame(f"kernel_{address:x}") for address in addresses]


class Recorder:
    collect_user = True
    collect_kernel = True

    def __init__(self) -> None:
        self.samples: list[tuple[int, list[str], int]] = []

    def add(self, process, kernel, user, count, labels) -> None:
        self.samples.append((process.pid, [f.name for f in [*kernel, *user]], count))


@pytest.fixture
def clock() -> list[float]:
    """The profiler's time, moved by the test."""
    return [1000.0]


def make(targets: dict[int, Recorder], clock: list[float]):
    session, symbolizer = ScriptedSession(), NamingSymbolizer()
    profiler = Profiler(
        session,
        symbolizer,
        lambda process: [targets[process.pid]] if process.pid in targets else [],
        clock=lambda: clock[0],
    )
    return profiler, session, symbolizer


def test_samples_of_a_process_discovery_has_not_seen_yet_are_held_then_routed(clock):
    targets: dict[int, Recorder] = {}
    profiler, session, _ = make(targets, clock)
    session.events = [PidEvent(PidEventType.NEW, 42, 1)]
    session.counts = [RawSample(42, (0x10,), (), 5)]
    profiler.collect()
    assert 42 not in session.states  # still pending in the kernel, not ignored
    clock[0] += 1
    targets[42] = Recorder()  # discovery caught up
    profiler.reclassify()
    session.counts = [RawSample(42, (0x10,), (), 2)]
    profiler.collect()
    assert session.states[42] is PidState.PROFILE
    assert sorted(targets[42].samples) == [(42, ["user_10"], 2), (42, ["user_10"], 5)]


def test_a_process_that_matches_nothing_is_ignored_after_the_grace_period(clock):
    profiler, session, _ = make({}, clock)
    session.events = [PidEvent(PidEventType.NEW, 7, 1)]
    session.counts = [RawSample(7, (0x1,), (), 3)]
    profiler.collect()
    clock[0] += profiler_module._PENDING_S + 0.1
    profiler.poll()
    assert session.states[7] is PidState.IGNORE
    assert profiler._held == {}
    assert profiler.unattributed["no_target"] == 3
    # a sample drained after the decision is counted too
    session.counts = [RawSample(7, (0x1,), (), 2)]
    profiler.collect()
    assert profiler.unattributed["no_target"] == 5


def test_an_exited_process_is_forgotten_after_its_last_samples(clock):
    recorder = Recorder()
    profiler, session, symbolizer = make({9: recorder}, clock)
    session.events = [PidEvent(PidEventType.NEW, 9, 1)]
    profiler.poll()
    session.events = [PidEvent(PidEventType.EXIT, 9, 0)]
    session.counts = [RawSample(9, (0x2,), (0xFFFF_FFFF_8100_0000,), 4)]
    profiler.collect()
    assert recorder.samples == [(9, ["kernel_ffffffff81000000", "user_2"], 4)]
    assert symbolizer.forgotten == [9]
    assert 9 not in profiler.profiled
    # the pid is reused by a process nobody wants: it is not routed to the old target
    session.events = [PidEvent(PidEventType.NEW, 9, 1)]
    session.counts = [RawSample(9, (0x3,), (), 1)]
    del_target = {}
    profiler._classify = lambda process: del_target.get(process.pid, [])
    profiler.collect()
    assert len(recorder.samples) == 1


def test_an_exited_process_keeps_its_target_until_its_last_samples_are_taken(clock):
    recorder = Recorder()
    targets = {9: recorder}
    profiler, session, _ = make(targets, clock)
    session.events = [PidEvent(PidEventType.NEW, 9, 1)]
    profiler.poll()
    session.events = [PidEvent(PidEventType.EXIT, 9, 0)]
    profiler.poll()
    del targets[9]  # discovery drops the exited process before the collection
    profiler.reclassify()
    session.counts = [RawSample(9, (0x2,), (), 4)]
    profiler.collect()
    assert recorder.samples == [(9, ["user_2"], 4)]
    assert profiler.unattributed["no_target"] == 0


def test_exec_rereads_the_maps_of_a_profiled_process(clock):
    profiler, session, symbolizer = make({5: Recorder()}, clock)
    session.events = [PidEvent(PidEventType.NEW, 5, 1), PidEvent(PidEventType.EXEC, 5, 0)]
    profiler.poll()
    assert symbolizer.forgotten == [5]
    assert symbolizer.added.count(5) >= 2


def test_resolved_stacks_are_kept_between_collections_until_the_process_execs(clock):
    recorder = Recorder()
    profiler, session, symbolizer = make({5: recorder}, clock)
    resolved = []
    naming = symbolizer.resolve_user
    symbolizer.resolve_user = lambda pid, addresses: (
        resolved.append(addresses) or naming(pid, addresses)
    )
    session.events = [PidEvent(PidEventType.NEW, 5, 1)]
    profiler.poll()
    clock[0] += profiler_module._SETTLE_S + 0.1  # settled: its libraries are loaded
    for _ in range(3):
        session.counts = [RawSample(5, (0x10, 0x20), (), 1)]
        profiler.collect()
    assert resolved == [(0x10, 0x20)]  # once, though collected three times
    session.events = [PidEvent(PidEventType.EXEC, 5, 0)]
    for _ in range(2):  # a new image, settling again: resolved each time
        session.counts = [RawSample(5, (0x10, 0x20), (), 1)]
        profiler.collect()
    assert resolved == [(0x10, 0x20)] * 3
    assert [count for *_, count in recorder.samples] == [1] * 5


def test_selection_follows_the_tree_of_a_root(tmp_path):
    proc = tmp_path
    for pid, ppid in ((10, 1), (11, 10), (12, 11), (20, 1)):
        (proc / str(pid)).mkdir()
        (proc / str(pid) / "stat").write_text(f"{pid} (sh (x)) S {ppid} 0 0\n")
    selection = ProcessSelection(roots={10}, proc_root=str(proc))
    assert selection.matches(12, 0)
    assert selection.matches(11, 10)
    assert not selection.matches(20, 0)
    assert ProcessSelection(all_processes=True).matches(20, 1)


def test_a_decision_made_after_the_process_exited_leaves_the_kernel_alone(clock):
    targets: dict[int, Recorder] = {}
    profiler, session, _ = make(targets, clock)
    session.events = [PidEvent(PidEventType.NEW, 42, 1)]
    profiler.poll()
    session.exited.add(42)  # gone from the kernel's map before discovery saw it
    targets[42] = Recorder()
    profiler.reclassify()
    assert 42 not in session.states
    clock[0] += profiler_module._PENDING_S + 0.1
    profiler.poll()
    assert 42 not in session.states


def test_samples_carry_what_the_kernel_saw_at_first_sight():
    recorder = Recorder()
    seen = []
    profiler = Profiler(
        ScriptedSession(), NamingSymbolizer(), lambda process: seen.append(process) or [recorder]
    )
    profiler._session.events = [PidEvent(PidEventType.NEW, 8, 1, "burner", 77, "x.scope")]
    profiler._session.counts = [RawSample(8, (0x1,), (), 2)]
    profiler.collect()
    assert seen[0].comm == "burner" and seen[0].cgroup_name == "x.scope"
    assert seen[0].ppid == 1 and seen[0].cgroup_id == 77


class UnwindingSession(ScriptedSession, RecordingSession):
    """The scripted kernel with the unwind maps over plain memory."""

    def __init__(self) -> None:
        ScriptedSession.__init__(self)
        RecordingSession.__init__(self, 1 << 20)


def test_a_new_process_has_its_maps_read_once_for_names_and_tables(clock, monkeypatch):
    reads: list[int] = []

    def counted(pid, *args):
        reads.append(pid)
        return read_maps(pid, *args)

    monkeypatch.setattr(resolver, "read_maps", counted)
    monkeypatch.setattr(processes, "read_maps", counted)
    session = UnwindingSession()
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        with Symbolizer() as symbolizer:
            profiler = Profiler(
                session,
                symbolizer,
                lambda process: [Recorder()] if process.pid == sleeper.pid else [],
                unwinder=NativeUnwinder(session),
                clock=lambda: clock[0],
            )
            session.events = [PidEvent(PidEventType.NEW, sleeper.pid, 1)]
            profiler.poll()
    finally:
        sleeper.kill()
        sleeper.wait()
    assert reads == [sleeper.pid]
    assert sleeper.pid in session.native  # walked with its tables
