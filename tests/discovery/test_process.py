"""discovery.process against the real /proc and against captured trees with odd processes."""

from __future__ import annotations

import logging
import os
import pwd
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.config.component import ArgumentError, ComponentOptions, Duration
from agent.discovery import DiscoverConfig, ProcessDiscovery, parse_container_id

CONTAINER = "c0ffee" + "0" * 58
OTHER = "beef" + "1" * 60
ALL_LABELS = DiscoverConfig(username=True, uid=True, cgroup_path=True)


class Recorder:
    """A recording ``on_exports``."""

    def __init__(self) -> None:
        self.calls: list[list[dict[str, str]]] = []
        self.changed = threading.Condition()

    def __call__(self, exports: dict) -> None:
        with self.changed:
            self.calls.append(exports["targets"])
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


def test_new_and_exited_processes_are_picked_up_promptly(running):
    arguments = ProcessDiscovery.Arguments(refresh_interval=Duration(600))
    _, recorder = running(arguments)
    recorder.wait_for(lambda targets: by_pid(targets, os.getpid()) is not None, 5)
    process = subprocess.Popen(["sleep", "60"])
    try:
        delay = recorder.wait_for(lambda targets: by_pid(targets, process.pid) is not None, 5)
        assert delay < 2.0
        assert by_pid(recorder.calls[-1], process.pid)["__meta_process_commandline"] == "sleep 60"
    finally:
        process.kill()
        process.wait()
    delay = recorder.wait_for(lambda targets: by_pid(targets, process.pid) is None, 5)
    assert delay < 2.0


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
    _, recorder = running(arguments, proc_root=str(odd_tree))
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


def test_default_labels(running, odd_tree):
    _, recorder = running(ProcessDiscovery.Arguments(), proc_root=str(odd_tree))
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
        ProcessDiscovery.Arguments(discover_config=config), proc_root=str(odd_tree)
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
    _, recorder = running(arguments, proc_root=str(odd_tree))
    recorder.wait_for(lambda targets: len(targets) == 7, 5)
    targets = recorder.calls[-1]
    assert targets[:2] == [external[2], external[3]]  # no container ID: passed through
    assert [t["__process_pid__"] for t in targets[2:5]] == ["100", "500", "600"]
    assert targets[2] == {**by_pid(targets, 100), **external[0]}  # merged, external wins
    assert targets[2]["app"] == "web" and targets[2]["__container_id__"] == CONTAINER
    assert targets[5:] == [external[0], external[1]]  # every container target, matched or not


def test_update_applies_join_at_once_and_discover_config_soon(running, odd_tree):
    discovery, recorder = running(ProcessDiscovery.Arguments(), proc_root=str(odd_tree))
    recorder.wait_for(lambda targets: len(targets) == 3, 5)
    discovery.update(ProcessDiscovery.Arguments(join=[{"__address__": "x"}]))
    assert recorder.calls[-1][0] == {"__address__": "x"}
    discovery.update(ProcessDiscovery.Arguments(discover_config=DiscoverConfig(uid=True)))
    recorder.wait_for(lambda targets: "__meta_process_uid" in targets[0], 3)


def test_exports_only_on_change(running, odd_tree):
    discovery, recorder = running(ProcessDiscovery.Arguments(), proc_root=str(odd_tree))
    recorder.wait_for(lambda targets: len(targets) == 3, 5)
    time.sleep(2.5)
    assert len(recorder.calls) == 1
    assert discovery.exports() == {"targets": recorder.calls[0]}
    assert discovery.health().state == "healthy"
    make_process(odd_tree, 700)
    recorder.wait_for(lambda targets: len(targets) == 4, 3)


def test_a_missing_proc_root_is_unhealthy_not_an_error(running, tmp_path):
    discovery, _ = running(ProcessDiscovery.Arguments(), proc_root=str(tmp_path / "absent"))
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
