"""``discovery.process``: one target per host process, read through ``/proc``.

Labels and skipping follow ``grafana/alloy:internal/component/discovery/process`` (reference
§11). Beyond Alloy, new processes are picked up within about a second: ``/proc`` is listed
every second and only new PIDs are read, besides the full rescan every ``refresh_interval``.
"""

from __future__ import annotations

import logging
import os
import pwd
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.config.component import ArgumentError, ComponentOptions, Duration, Health, block
from agent.discovery.containers import parse_container_id
from agent.discovery.exports import PublishedTargets, TargetsExports

__all__ = ["DiscoverConfig", "ProcessDiscovery"]

log = logging.getLogger(__name__)

LABEL_PID = "__process_pid__"
LABEL_EXE = "__meta_process_exe"
LABEL_CWD = "__meta_process_cwd"
LABEL_COMMANDLINE = "__meta_process_commandline"
LABEL_USERNAME = "__meta_process_username"
LABEL_UID = "__meta_process_uid"
LABEL_CGROUP_PATH = "__meta_process_cgroup_path"
LABEL_CONTAINER_ID = "__container_id__"

_SCAN_INTERVAL = 1.0  # seconds between /proc listings that pick up new processes
_PF_KTHREAD = 0x00200000  # include/linux/sched.h
_K8S_PREFIXES = ("docker://", "containerd://", "cri-o://")


@dataclass(frozen=True)
class DiscoverConfig:
    """The ``discover_config`` block; defaults are Alloy's code, not its docs (§11.1)."""

    cwd: bool = True
    exe: bool = True
    commandline: bool = True
    username: bool = False
    uid: bool = False
    container_id: bool = True
    cgroup_path: bool = False


class _Skip(Exception):
    """The process is left out of this refresh."""


class ProcessDiscovery:
    """``discovery.process``: exports ``targets``, one per process, merged with ``join``.

    Example::

        discovery = ProcessDiscovery(options, ProcessDiscovery.Arguments(), proc_root="/proc")
        threading.Thread(target=discovery.run, args=(stop,)).start()
    """

    @dataclass(frozen=True)
    class Arguments:
        join: list[dict[str, str]] = field(default_factory=list)
        refresh_interval: Duration = Duration(60)
        discover_config: DiscoverConfig = block(default_factory=DiscoverConfig)

        def __post_init__(self) -> None:
            if self.refresh_interval <= 0:
                raise ArgumentError("refresh_interval", "must be greater than 0")

    Exports = TargetsExports

    def __init__(
        self,
        options: ComponentOptions,
        arguments: ProcessDiscovery.Arguments,
        *,
        proc_root: str = "/proc",
    ) -> None:
        self._options = options
        self._proc_root = proc_root
        self._lock = threading.Lock()
        self._args = arguments
        self._processes: dict[int, dict[str, str]] = {}
        self._skipped: set[int] = set()  # not retried until the next full refresh
        self._full_refresh_due = True
        self._published = PublishedTargets(options)

    def run(self, stop: threading.Event) -> None:
        next_full = 0.0
        while not stop.is_set():
            with self._lock:
                full = self._full_refresh_due or time.monotonic() >= next_full
                self._full_refresh_due = False
                interval = float(self._args.refresh_interval)
            self._refresh(full)
            if full:
                next_full = time.monotonic() + interval
            stop.wait(max(0.0, min(_SCAN_INTERVAL, next_full - time.monotonic())))

    def update(self, arguments: ProcessDiscovery.Arguments) -> None:
        """New ``discover_config`` → full rescan on the next tick; new ``join`` → now."""
        with self._lock:
            previous, self._args = self._args, arguments
            if (previous.discover_config, previous.refresh_interval) != (
                arguments.discover_config,
                arguments.refresh_interval,
            ):
                self._full_refresh_due = True
        self._publish()

    def exports(self) -> dict[str, Any]:
        return self._published.exports()

    def health(self) -> Health:
        return self._published.health()

    def _refresh(self, full: bool) -> None:
        try:
            pids = _list_pids(self._proc_root)
        except OSError as exc:
            message = f"cannot list {self._proc_root}: {exc.strerror or exc}"
            self._published.set_health("unhealthy", message)
            return
        with self._lock:
            config = self._args.discover_config
            known = {} if full else {p: t for p, t in self._processes.items() if p in pids}
            skipped = set() if full else self._skipped & pids
        for pid in sorted(pids - known.keys() - skipped):
            try:
                known[pid] = _read_process(self._proc_root, pid, config)
            except _Skip:
                skipped.add(pid)
        with self._lock:
            self._processes, self._skipped = known, skipped
        if full or self._published.health().state != "healthy":
            self._published.set_health("healthy", f"{len(known)} processes")
        self._publish()

    def _publish(self) -> None:
        with self._lock:
            processes = [self._processes[pid] for pid in sorted(self._processes)]
            targets = _join_targets(processes, self._args.join)
        self._published.publish(targets)


def _list_pids(proc_root: str) -> set[int]:
    with os.scandir(proc_root) as entries:
        return {int(entry.name) for entry in entries if entry.name.isdigit()}


def _read_process(proc_root: str, pid: int, config: DiscoverConfig) -> dict[str, str]:
    """The labels of one process; raises ``_Skip`` for kernel threads and failed reads."""
    base = os.path.join(proc_root, str(pid))
    stat = _read(pid, os.path.join(base, "stat"))
    if _is_kernel_thread(stat):
        raise _Skip
    labels = {LABEL_PID: str(pid)}
    if config.exe:
        _put(labels, LABEL_EXE, _text(_readlink(pid, os.path.join(base, "exe"))))
    if config.cwd:
        _put(labels, LABEL_CWD, _text(_readlink(pid, os.path.join(base, "cwd"))))
    if config.commandline:
        arguments = _read(pid, os.path.join(base, "cmdline")).split(b"\0")
        _put(labels, LABEL_COMMANDLINE, _text(b" ".join(a for a in arguments if a)))
    if config.username or config.uid:
        _put_user(labels, pid, os.path.join(base, "status"), config)
    if config.container_id or config.cgroup_path:
        cgroup = _text(_read(pid, os.path.join(base, "cgroup")))
        if config.container_id:
            _put(labels, LABEL_CONTAINER_ID, parse_container_id(cgroup) or "")
        if config.cgroup_path:
            _put(labels, LABEL_CGROUP_PATH, "|".join(cgroup.splitlines()))
    return labels


def _is_kernel_thread(stat: bytes) -> bool:
    """PF_KTHREAD in the flags (field 9), counted after the command's last ``)``."""
    try:
        flags = int(stat[stat.rindex(b")") + 2 :].split()[6])
    except (ValueError, IndexError):
        return False
    return bool(flags & _PF_KTHREAD)


def _put_user(labels: dict[str, str], pid: int, path: str, config: DiscoverConfig) -> None:
    """UID and user name only log on failure; they never skip the process (as in Alloy)."""
    try:
        status = _read(pid, path)
    except _Skip:
        return
    uid = next((line.split()[1] for line in status.splitlines() if line.startswith(b"Uid:")), None)
    if uid is None:
        return
    if config.uid:
        labels[LABEL_UID] = uid.decode()
    if config.username:
        try:
            labels[LABEL_USERNAME] = pwd.getpwuid(int(uid)).pw_name
        except KeyError:
            pass  # an unknown UID leaves the label out


def _read(pid: int, path: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as exc:
        raise _skip(pid, path, exc) from exc


def _readlink(pid: int, path: str) -> bytes:
    try:
        return os.readlink(os.fsencode(path))
    except OSError as exc:
        raise _skip(pid, path, exc) from exc


def _skip(pid: int, path: str, exc: OSError) -> _Skip:
    """Vanished processes are skipped silently; other failures are logged once per refresh."""
    if not isinstance(exc, FileNotFoundError | ProcessLookupError):
        log.warning("pid %d skipped: cannot read %s: %s", pid, path, exc.strerror or exc)
    return _Skip()


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def _put(labels: dict[str, str], name: str, value: str) -> None:
    if value:
        labels[name] = value


def _join_targets(
    processes: Iterable[Mapping[str, str]], external: Iterable[Mapping[str, str]]
) -> list[dict[str, str]]:
    """Alloy's ``join`` (§11.3): processes merged with the external target of their
    container (external labels win), unmatched processes, then every external target."""
    result: list[dict[str, str]] = []
    by_container: dict[str, Mapping[str, str]] = {}
    for target in external:
        container_id = _container_id_of(target)
        if container_id:
            by_container[container_id] = target
        else:
            result.append(dict(target))
    for process in processes:
        container = by_container.get(_container_id_of(process))
        merged = dict(process) if container is None else _merge(process, container)
        result.append(merged)
    result.extend(dict(target) for target in by_container.values())
    return result


def _merge(base: Mapping[str, str], over: Mapping[str, str]) -> dict[str, str]:
    merged = dict(base)
    for name, value in over.items():
        if value:
            merged[name] = value
        else:
            merged.pop(name, None)
    return merged


def _container_id_of(target: Mapping[str, str]) -> str:
    if target.get(LABEL_CONTAINER_ID):
        return target[LABEL_CONTAINER_ID]
    k8s = target.get("__meta_kubernetes_pod_container_id", "")
    if k8s:
        return next((k8s[len(p) :] for p in _K8S_PREFIXES if k8s.startswith(p)), "")
    return target.get("__meta_docker_container_id", "")
