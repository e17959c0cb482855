"""discovery.process against the real /proc and kernel, and against captured trees with odd
processes."""

from __future__ import annotations

import errno
import logging
import os
import pwd
import queue
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from agent.config.component import ArgumentError, ComponentOptions, Duration
from agent.discovery import DiscoverConfig, ProcessDiscovery, parse_container_id
from agent.discovery.procevents import ProcEvents
from agent.errors import DiscoveryError
from tests.agent import wait_for
from tests.conftest import compile_workload
from tests.discovery.test_procevents import exec_, fork, message

CONTAINER = "c0ffee" + "0" * 58
OTHER = "beef" + "1" * 60
ALL_LABELS = DiscoverConfig(username=True, uid=True, cgroup_path=True)
CAPTURED = {"open_events": None}  # a captured tree gets no kernel events: it is listed
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the process events need root")


class Recorder:
    """A recording ``on_exports``."""

    def __init__(self) -> None:
        self.calls: list[list[dict[str, str]]] = []
        self.times: list[float] = []  # time.monotonic() of each call
        self.changed = threading.Condition()

    def __call__(self, exports: dict) -> None:
        with self.changed:
            self.calls.append(exports["targets"])
            self.times.append(time.monotonic())
            self.changed.notify_all()

    def wait_for(self, predicate: Callable[[list[dict[str, str]]], bool], timeout: float) -> float:
        """Seconds until the latest export satisfies ``predicate``; fails after ``timeout``."""
        start = time.monotonic()
        with self.changed:
            ok = self.changed.wait_for(lambda: self.calls and predicate(self.calls[-1]), timeout)
        assert ok, f"no matching export within {timeout} s; last: {self.calls[-1:]}"
        return time.monotonic() - start


def options(recorder: Recorder) -> ComponentOptions:
    return ComponentOptions("discovery.process.test", recorder, {}, threading.Lock())


@pytest.fixture
def running() -> Iterator[Callable[..., tuple[ProcessDiscovery, Recorder]]]:
    """Start ``ProcessDiscovery.run`` on a thread; stop and join it afterwards."""
    stops: list[tuple[threading.Event, threading.Thread]] = []

    def start(arguments: ProcessDiscovery.Arguments, **kwargs) -> tuple[ProcessDiscovery, Recorder]:
        recorder = Recorder()
        discovery = ProcessDiscovery(options(recorder), arguments, **kwargs)
        stop = threading.Event()
        thread = threading.Thread(target=discovery.run, args=(stop,), daemon=True)
        thread.start()
        stops.append((stop, thread))
        return discovery, recorder

    yield start
    for stop, thread in stops:
        stop.set()
        thread.join(timeout=5)
        assert not thread.is_alive()


def by_pid(targets: list[dict[str, str]], pid: int) -> dict[str, str] | None:
    return next((t for t in targets if t.get("__process_pid__") == str(pid)), None)


class QueueSocket:
    """A connector socket fed by the test: datagrams, or errors to raise."""

    def __init__(self) -> None:
        self.items: queue.Queue[bytes | OSError] = queue.Queue()
        self.timeout = 0.0

    def settimeout(self, value: float | None) -> None:
        self.timeout = value or 0.0

    def recv(self, bufsize: int) -> bytes:
        try:
            item = self.items.get(timeout=self.timeout) if self.timeout else self.items.get(False)
        except queue.Empty:
            raise TimeoutError if self.timeout else BlockingIOError(errno.EAGAIN, "empty") from None
        if isinstance(item, OSError):
            raise item
        return item[:bufsize]

    def sendto(self, data: bytes, address: tuple[int, int]) -> int:
        return len(data)

    def close(self) -> None:
        pass


# ---- the real /proc ----------------------------------------------------------------------


@pytest.fixture
def nobody_sleep(tmp_path) -> Iterator[subprocess.Popen]:
    """``sleep 60`` as uid 65534 in ``tmp_path``."""
    tmp_path.chmod(0o755)
    process = subprocess.Popen(["sleep", "60"], cwd=tmp_path, user=65534)
    try:
        yield process
    finally:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def burner(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``burner MS``: a C program that spins for MS milliseconds."""
    directory = tmp_path_factory.mktemp("burner").resolve()
    return compile_workload("burner.c", directory / "burner", "-O1")


def test_a_real_process_has_its_labels(running, nobody_sleep, tmp_path):
    _, recorder = running(ProcessDiscovery.Arguments(discover_config=ALL_LABELS))
    recorder.wait_for(lambda targets: by_pid(targets, nobody_sleep.pid) is not None, 5)
    target = by_pid(recorder.calls[-1], nobody_sleep.pid)
    pid = nobody_sleep.pid
    cgroup = Path(f"/proc/{pid}/cgroup").read_text()
    expected = {
        "__process_pid__": str(pid),
        "__meta_process_exe": os.readlink(f"/proc/{pid}/exe"),
        "__meta_process_cwd": str(tmp_path.resolve()),
        "__meta_process_commandline": "sleep 60",
        "__meta_process_uid": "65534",
        "__meta_process_cgroup_path": "|".join(cgroup.splitlines()),
    }
    try:
        expected["__meta_process_username"] = pwd.getpwuid(65534).pw_name
    except KeyError:
        pass  # no passwd entry: the label is left out
    if parse_container_id(cgroup):
        expected["__container_id__"] = parse_container_id(cgroup)
    assert target == expected
    assert os.path.basename(target["__meta_process_exe"]) in ("sleep", "coreutils", "busybox")


def test_kernel_threads_are_not_targets(running):
    _, recorder = running(ProcessDiscovery.Arguments())
    recorder.wait_for(lambda targets: len(targets) > 0, 5)
    assert by_pid(recorder.calls[-1], 2) is None  # kthreadd
    assert by_pid(recorder.calls[-1], os.getpid())["__meta_process_commandline"]


@needs_root
def test_an_exited_process_stays_a_target_for_the_grace_then_leaves(running):
    discovery, recorder = running(ProcessDiscovery.Arguments(refresh_interval=Duration(600)))
    recorder.wait_for(lambda targets: by_pid(targets, os.getpid()) is not None, 5)
    process = subprocess.Popen(["sleep", "60"])
    try:
        delay = recorder.wait_for(lambda targets: by_pid(targets, process.pid) is not None, 5)
        assert delay < 0.5
        assert by_pid(recorder.calls[-1], process.pid)["__meta_process_commandline"] == "sleep 60"
    finally:
        process.kill()
        process.wait()
    exited = time.monotonic()
    time.sleep(6)  # pyroscope.ebpf holds an unmatched process's samples for 5 s
    assert by_pid(discovery.exports()["targets"], process.pid) is not None
    assert discovery.debug_info()["exited_in_grace"] >= 1
    recorder.wait_for(lambda targets: by_pid(targets, process.pid) is None, 6)
    assert 9.5 <= time.monotonic() - exited <= 11


@needs_root
def test_processes_that_live_30_ms_are_targets(running, burner):
    discovery, recorder = running(ProcessDiscovery.Arguments(refresh_interval=Duration(60)))
    recorder.wait_for(lambda targets: by_pid(targets, os.getpid()) is not None, 5)
    assert discovery.debug_info()["process_events"] == "subscribed"
    pids, lifetimes = [], []
    for _ in range(50):
        start = time.monotonic()
        child = subprocess.Popen(["sh", "-c", f"exec {burner} 30"])
        child.wait()
        lifetimes.append(time.monotonic() - start)
        pids.append(child.pid)

    def seen(targets: list[dict[str, str]]) -> list[int]:
        exes = {pid: (by_pid(targets, pid) or {}).get("__meta_process_exe") for pid in pids}
        return [pid for pid, exe in exes.items() if exe == str(burner)]

    try:
        recorder.wait_for(lambda targets: len(seen(targets)) == len(pids), 2)
    except AssertionError:
        pass  # the share is asserted below
    found = seen(recorder.calls[-1])
    median_ms = statistics.median(lifetimes) * 1000
    print(f"\n30 ms processes (median life {median_ms:.0f} ms) seen: {len(found)}/{len(pids)}")
    print(f"debug info: {discovery.debug_info()}")
    assert len(found) >= 0.95 * len(pids)
    assert by_pid(recorder.calls[-1], found[0])["__meta_process_commandline"] == f"{burner} 30"


@needs_root
def test_exports_are_batched_while_200_processes_start(running):
    discovery, recorder = running(ProcessDiscovery.Arguments(refresh_interval=Duration(60)))
    recorder.wait_for(lambda targets: by_pid(targets, os.getpid()) is not None, 5)
    time.sleep(0.3)
    first = len(recorder.calls)
    start = time.monotonic()
    children = []
    for _ in range(200):  # spread over about a second, as a busy node does
        children.append(subprocess.Popen(["sleep", "0.2"]))
        time.sleep(0.003)
    spawned = time.monotonic() - start
    for child in children:
        child.wait()
    try:
        recorder.wait_for(lambda targets: all(by_pid(targets, c.pid) for c in children), 2)
    except AssertionError:
        pass  # the share is asserted below
    found = [c.pid for c in children if by_pid(recorder.calls[-1], c.pid)]
    exports = recorder.times[first:]
    gaps = [later - earlier for earlier, later in zip(exports, exports[1:], strict=False)]
    print(f"\n{len(exports)} exports while 200 processes of 0.2 s started in {spawned:.2f} s")
    print(f"of them seen: {len(found)}/200; debug info: {discovery.debug_info()}")
    assert spawned < 2.0
    assert len(found) >= 0.95 * len(children)
    assert len(exports) <= spawned / 0.2 + 3  # one per 200 ms, the last after the spawning
    assert not gaps or min(gaps) >= 0.19


def test_an_overrun_rescans_and_finds_what_the_lost_events_said(running):
    sock = QueueSocket()
    arguments = ProcessDiscovery.Arguments(refresh_interval=Duration(60))
    discovery, recorder = running(arguments, open_events=lambda: ProcEvents(sock))
    recorder.wait_for(lambda targets: by_pid(targets, os.getpid()) is not None, 5)
    process = subprocess.Popen(["sleep", "60"])  # its events are "lost": the fake never says
    try:
        time.sleep(1.5)
        assert by_pid(discovery.exports()["targets"], process.pid) is None
        sock.items.put(OSError(errno.ENOBUFS, "No buffer space available"))
        delay = recorder.wait_for(lambda targets: by_pid(targets, process.pid) is not None, 3)
    finally:
        process.kill()
        process.wait()
    info = discovery.debug_info()
    assert delay < 1.0
    assert info["process_events"] == "subscribed"
    assert info["counts"]["overruns"] == 1 and info["counts"]["full_refreshes"] == 2
    assert info["events"] == {"overrun": 1}


def test_bad_datagrams_are_counted_and_the_next_event_still_read(running):
    sock = QueueSocket()
    arguments = ProcessDiscovery.Arguments(refresh_interval=Duration(60))
    discovery, recorder = running(arguments, open_events=lambda: ProcEvents(sock))
    recorder.wait_for(lambda targets: by_pid(targets, os.getpid()) is not None, 5)
    process = subprocess.Popen(["sleep", "60"])
    try:
        for datagram in (fork(1, process.pid)[:30], message(0x12345, b"\0" * 24), b"\1"):
            sock.items.put(datagram)
        sock.items.put(exec_(process.pid))
        recorder.wait_for(lambda targets: by_pid(targets, process.pid) is not None, 3)
    finally:
        process.kill()
        process.wait()
    assert discovery.debug_info()["events"] == {"exec": 1, "malformed": 2, "unknown": 1}


def test_a_process_gone_before_it_is_read_is_counted_missed(running):
    sock = QueueSocket()
    arguments = ProcessDiscovery.Arguments(refresh_interval=Duration(60))
    discovery, recorder = running(arguments, open_events=lambda: ProcEvents(sock))
    recorder.wait_for(lambda targets: by_pid(targets, os.getpid()) is not None, 5)
    process = subprocess.Popen(["true"])
    process.wait()
    sock.items.put(fork(os.getpid(), process.pid))
    sock.items.put(exec_(process.pid))
    deadline = time.monotonic() + 3
    while discovery.debug_info()["counts"].get("missed", 0) < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert discovery.debug_info()["counts"]["missed"] == 1
    assert by_pid(discovery.exports()["targets"], process.pid) is None


def test_without_the_connector_new_processes_are_listed_within_a_second(running, caplog):
    caplog.set_level(logging.INFO, logger="agent.discovery.process")

    def unavailable() -> ProcEvents:
        raise DiscoveryError("process events connector", "cannot join: Operation not permitted")

    arguments = ProcessDiscovery.Arguments(refresh_interval=Duration(600))
    discovery, recorder = running(arguments, open_events=unavailable, exit_grace=1.0)
    recorder.wait_for(lambda targets: by_pid(targets, os.getpid()) is not None, 5)
    process = subprocess.Popen(["sleep", "60"])
    try:
        delay = recorder.wait_for(lambda targets: by_pid(targets, process.pid) is not None, 5)
        assert delay < 2.0
    finally:
        process.kill()
        process.wait()
    delay = recorder.wait_for(lambda targets: by_pid(targets, process.pid) is None, 5)
    assert 1.0 <= delay < 3.0  # seen gone within a second, then the grace
    assert discovery.debug_info()["process_events"] == (
        "unavailable: process events connector: cannot join: Operation not permitted"
    )
    infos = [r for r in caplog.records if "process events connector" in r.getMessage()]
    assert [r.levelname for r in infos] == ["INFO"]


# ---- captured trees ----------------------------------------------------------------------


def make_process(
    root: Path,
    pid: int,
    *,
    exe: str | None = "/usr/bin/python3",
    cwd: str | None = "/srv",
    cmdline: bytes = b"python3\0app.py\0\0",
    uid: int = 0,
    cgroup: str = "0::/user.slice/session-1.scope\n",
    flags: int = 0x400000,
    comm: str = "app",
) -> Path:
    directory = root / str(pid)
    directory.mkdir()
    after_comm = ["S", "1", str(pid), str(pid), "0", "-1", str(flags)] + ["0"] * 12 + ["777"]
    (directory / "stat").write_text(f"{pid} ({comm}) " + " ".join(after_comm) + " 0 0\n")
    if exe is not None:
        (directory / "exe").symlink_to(exe)
    if cwd is not None:
        (directory / "cwd").symlink_to(cwd)
    (directory / "cmdline").write_bytes(cmdline)
    (directory / "status").write_text(f"Name:\t{comm}\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n")
    (directory / "cgroup").write_text(cgroup)
    return directory


@pytest.fixture
def odd_tree(tmp_path) -> Path:
    root = tmp_path / "proc"
    root.mkdir()
    make_process(root, 100, cgroup=f"0::/system.slice/docker-{CONTAINER}.scope\n")
    make_process(root, 2, exe=None, cwd=None, cmdline=b"", flags=0x00208040, comm="kthreadd")
    gone = make_process(root, 300)  # vanished between listing and reading
    for name in ("exe", "cwd", "cmdline", "status", "cgroup"):
        (gone / name).unlink()
    unreadable = make_process(root, 400, exe=None)
    (unreadable / "exe").write_text("not a link")  # readlink fails with EINVAL
    make_process(root, 500, cmdline=b"", comm="odd) S 1 (")
    make_process(root, 600, uid=4_000_000_000, exe="/opt/odd name (deleted)")
    (root / "self").symlink_to("100")
    (root / "meminfo").write_text("")
    return root


def test_captured_tree_with_odd_processes(running, odd_tree, caplog):
    caplog.set_level(logging.WARNING, logger="agent.discovery.process")
    arguments = ProcessDiscovery.Arguments(discover_config=ALL_LABELS)
    _, recorder = running(arguments, proc_root=str(odd_tree), **CAPTURED)
    recorder.wait_for(lambda targets: len(targets) == 3, 5)
    root_name = pwd.getpwuid(0).pw_name
    assert recorder.calls[-1] == [
        {
            "__process_pid__": "100",
            "__meta_process_exe": "/usr/bin/python3",
            "__meta_process_cwd": "/srv",
            "__meta_process_commandline": "python3 app.py",
            "__meta_process_uid": "0",
            "__meta_process_username": root_name,
            "__container_id__": CONTAINER,
            "__meta_process_cgroup_path": f"0::/system.slice/docker-{CONTAINER}.scope",
        },
        {
            "__process_pid__": "500",
            "__meta_process_exe": "/usr/bin/python3",
            "__meta_process_cwd": "/srv",
            "__meta_process_uid": "0",
            "__meta_process_username": root_name,
            "__meta_process_cgroup_path": "0::/user.slice/session-1.scope",
        },
        {
            "__process_pid__": "600",
            "__meta_process_exe": "/opt/odd name (deleted)",
            "__meta_process_cwd": "/srv",
            "__meta_process_commandline": "python3 app.py",
            "__meta_process_uid": "4000000000",
            "__meta_process_cgroup_path": "0::/user.slice/session-1.scope",
        },
    ]
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "pid 400" in warnings[0]  # vanished pid 300 is not logged


def test_odd_files_are_not_waited_on_nor_read_whole(running, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="agent.discovery.process")
    root = tmp_path / "proc"
    root.mkdir()
    fifo = make_process(root, 100)
    (fifo / "cmdline").unlink()
    os.mkfifo(fifo / "cmdline")  # no writer: a blocking open would never return
    device = make_process(root, 200)
    (device / "cgroup").unlink()
    (device / "cgroup").symlink_to("/dev/zero")  # endless
    make_process(root, 300, cmdline=b"x" * (1 << 20))
    _, recorder = running(ProcessDiscovery.Arguments(), proc_root=str(root), **CAPTURED)
    recorder.wait_for(lambda targets: len(targets) == 1, 5)
    assert len(by_pid(recorder.calls[-1], 300)["__meta_process_commandline"]) == 65536
    warnings = sorted(r.getMessage() for r in caplog.records)
    assert [w.split(": ")[1] for w in warnings] == ["pid 100 skipped", "pid 200 skipped"]
    assert warnings[0].endswith("not a regular file")


def test_an_unreadable_process_is_logged_once_then_only_counted(odd_tree, caplog):
    caplog.set_level(logging.WARNING, logger="agent.discovery.process")
    registry = CollectorRegistry()
    recorder = Recorder()
    discovery = ProcessDiscovery(
        ComponentOptions("discovery.process.test", recorder, {}, threading.Lock(), registry),
        ProcessDiscovery.Arguments(refresh_interval=Duration(0.05)),
        proc_root=str(odd_tree),
        **CAPTURED,
    )
    stop = threading.Event()
    thread = threading.Thread(target=discovery.run, args=(stop,), daemon=True)
    thread.start()

    def skipped() -> float:
        labels = {"component_id": "discovery.process.test"}
        return registry.get_sample_value("emberscope_discovery_process_skipped_total", labels)

    try:
        wait_for(lambda: (skipped() or 0) >= 5, 10, "five full refreshes")
    finally:
        stop.set()
        thread.join(timeout=5)
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == [
        f"discovery.process.test: pid 400 skipped: cannot read {odd_tree}/400/exe: Invalid argument"
    ]


def test_default_labels(running, odd_tree):
    _, recorder = running(ProcessDiscovery.Arguments(), proc_root=str(odd_tree), **CAPTURED)
    recorder.wait_for(lambda targets: len(targets) == 3, 5)
    assert by_pid(recorder.calls[-1], 100) == {
        "__process_pid__": "100",
        "__meta_process_exe": "/usr/bin/python3",
        "__meta_process_cwd": "/srv",
        "__meta_process_commandline": "python3 app.py",
        "__container_id__": CONTAINER,
    }


def test_kernel_threads_are_skipped_even_without_exe(running, odd_tree):
    config = DiscoverConfig(exe=False, cwd=False, commandline=False, container_id=False)
    _, recorder = running(
        ProcessDiscovery.Arguments(discover_config=config), proc_root=str(odd_tree), **CAPTURED
    )
    recorder.wait_for(lambda targets: len(targets) >= 4, 5)
    pids = [target["__process_pid__"] for target in recorder.calls[-1]]
    assert pids == ["100", "300", "400", "500", "600"]


def test_join_merges_container_targets(running, odd_tree):
    external = [
        {"__meta_kubernetes_pod_container_id": f"containerd://{CONTAINER}", "app": "web"},
        {"__meta_docker_container_id": OTHER, "app": "db"},
        {"__address__": "10.0.0.1:80"},
        {"__meta_kubernetes_pod_container_id": f"rkt://{OTHER}", "app": "unknown-scheme"},
    ]
    arguments = ProcessDiscovery.Arguments(join=external)
    _, recorder = running(arguments, proc_root=str(odd_tree), **CAPTURED)
    recorder.wait_for(lambda targets: len(targets) == 7, 5)
    targets = recorder.calls[-1]
    assert targets[:2] == [external[2], external[3]]  # no container ID: passed through
    assert [t["__process_pid__"] for t in targets[2:5]] == ["100", "500", "600"]
    assert targets[2] == {**by_pid(targets, 100), **external[0]}  # merged, external wins
    assert targets[2]["app"] == "web" and targets[2]["__container_id__"] == CONTAINER
    assert targets[5:] == [external[0], external[1]]  # every container target, matched or not


def test_update_applies_join_at_once_and_discover_config_soon(running, odd_tree):
    discovery, recorder = running(ProcessDiscovery.Arguments(), proc_root=str(odd_tree), **CAPTURED)
    recorder.wait_for(lambda targets: len(targets) == 3, 5)
    discovery.update(ProcessDiscovery.Arguments(join=[{"__address__": "x"}]))
    assert recorder.calls[-1][0] == {"__address__": "x"}
    discovery.update(ProcessDiscovery.Arguments(discover_config=DiscoverConfig(uid=True)))
    recorder.wait_for(lambda targets: "__meta_process_uid" in targets[0], 3)


def test_exports_only_on_change(running, odd_tree):
    discovery, recorder = running(ProcessDiscovery.Arguments(), proc_root=str(odd_tree), **CAPTURED)
    recorder.wait_for(lambda targets: len(targets) == 3, 5)
    time.sleep(2.5)
    assert len(recorder.calls) == 1
    assert discovery.exports() == {"targets": recorder.calls[0]}
    assert discovery.health().state == "healthy"
    make_process(odd_tree, 700)
    recorder.wait_for(lambda targets: len(targets) == 4, 3)


def test_a_missing_proc_root_is_unhealthy_not_an_error(running, tmp_path):
    discovery, _ = running(
        ProcessDiscovery.Arguments(), proc_root=str(tmp_path / "absent"), **CAPTURED
    )
    deadline = time.monotonic() + 5
    while discovery.health().state != "unhealthy" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert discovery.health().state == "unhealthy"


def test_arguments_defaults_and_checks():
    arguments = ProcessDiscovery.Arguments()
    assert arguments.join == [] and arguments.refresh_interval == 60
    assert arguments.discover_config == DiscoverConfig(
        cwd=True, exe=True, commandline=True, username=False, uid=False, container_id=True
    )
    assert arguments.discover_config.cgroup_path is False
    with pytest.raises(ArgumentError) as error:
        ProcessDiscovery.Arguments(refresh_interval=Duration(0))
    assert error.value.argument == "refresh_interval"
