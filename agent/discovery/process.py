"""``discovery.process``: one target per host process, read through ``/proc``.

Labels and skipping follow ``grafana/alloy:internal/component/discovery/process`` (reference
§11). Beyond Alloy, a process is read when the kernel reports its fork or exec (the process
events connector), so one that lives 30 ms is still a target; an exited one stays a target
for a grace period. Without the connector, ``/proc`` is listed every second instead.
"""

from __future__ import annotations

import logging
import math
import os
import pwd
import stat
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.config.component import ArgumentError, ComponentOptions, Duration, Health, block
from agent.discovery.containers import parse_container_id
from agent.discovery.exports import PublishedTargets, TargetsExports, component_counter
from agent.discovery.procevents import ProcEvent, ProcEventKind, ProcEvents, open_proc_events
from agent.discovery.targets import container_id_of
from agent.errors import DiscoveryError

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

# An exited process stays a target this long. pyroscope.ebpf holds the samples of a process
# it has not matched yet for 5 s, then drops them: the grace outlasts that hold, so the
# samples of a process that lived 30 ms still find its target.
_EXIT_GRACE = 10.0
# Exports at most this often: each one re-evaluates the components downstream, which a node
# starting a thousand processes a minute must not pay per process.
_EXPORT_INTERVAL = 0.2
# A forked child usually execs within a millisecond or two: waiting this long after the first
# change exports the program it runs, not its parent's.
_EXPORT_DELAY = 0.05
_SCAN_INTERVAL = 1.0  # without the connector: seconds between /proc listings
_SCAN_DRAIN = 64  # processes read by a scan between two looks at the connector
_STOP_POLL = 0.25  # longest wait on the connector before ``stop`` is looked at
_PF_KTHREAD = 0x00200000  # include/linux/sched.h
# Bytes read at most per /proc file: a process controls its command line (up to 2 MiB)
# and its cgroup path; longer ones are cut.
_STAT_LIMIT = 4096
_STATUS_LIMIT = 4096  # "Uid:" is the ninth line
_CGROUP_LIMIT = 16384
_CMDLINE_LIMIT = 65536


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
    """The process is left out; ``vanished`` when it exited before it could be read,
    ``reason`` when a file of it could not be read."""

    def __init__(self, vanished: bool = False, reason: str = "") -> None:
        super().__init__(reason)
        self.vanished = vanished
        self.reason = reason


class ProcessDiscovery:
    """``discovery.process``: exports ``targets``, one per process, merged with ``join``.

    Example::

        discovery = ProcessDiscovery(options, ProcessDiscovery.Arguments(), proc_root="/proc")
        threading.Thread(target=discovery.run, args=(stop,)).start()

    ``open_events`` opens the process events connector (None: list ``/proc`` instead, as
    for a captured tree); ``exit_grace`` is how long an exited process stays a target.
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
        open_events: Callable[[], ProcEvents] | None = open_proc_events,
        exit_grace: float = _EXIT_GRACE,
    ) -> None:
        self._options = options
        self._proc_root = proc_root
        self._open_events = open_events
        self._exit_grace = exit_grace
        self._lock = threading.Lock()
        self._args = arguments
        self._processes: dict[int, dict[str, str]] = {}
        self._exited: dict[int, float] = {}  # pid -> when its exit was seen; still a target
        self._skipped: set[int] = set()  # not retried until the next full refresh
        self._skip_logged: set[int] = set()  # why they were skipped was logged: not again
        self._skip_counter = _skip_counter(options)
        self._full_refresh_due = True
        self._changed_at: float | None = None  # the first change not exported yet
        self._exported_at = -math.inf
        self._events: ProcEvents | None = None  # owned by the thread in ``run``
        self._events_state = "not started"
        self._counts: Counter[str] = Counter()  # missed, skipped, overruns, full_refreshes
        self._event_counts: dict[str, int] = {}  # the connector's, by kind
        self._published = PublishedTargets(options)

    def run(self, stop: threading.Event) -> None:
        self._events = self._subscribe()
        try:
            self._loop(stop)
        finally:
            self._unsubscribe("stopped")

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

    def debug_info(self) -> dict[str, Any]:
        """How new processes are learnt of, and what was lost on the way."""
        with self._lock:
            return {
                "process_events": self._events_state,
                "processes": len(self._processes) - len(self._exited),
                "exited_in_grace": len(self._exited),
                "counts": dict(sorted(self._counts.items())),
                "events": dict(sorted(self._event_counts.items())),
            }

    def _subscribe(self) -> ProcEvents | None:
        if self._open_events is None:
            self._set_events_state("off: /proc is listed every second")
            return None
        try:
            events = self._open_events()
        except DiscoveryError as exc:
            log.info(
                "%s: %s; new processes are found by listing %s every second instead",
                self._options.id,
                exc,
                self._proc_root,
            )
            self._set_events_state(f"unavailable: {exc}")
            return None
        self._set_events_state("subscribed")
        return events

    def _unsubscribe(self, state: str) -> None:
        events, self._events = self._events, None
        if events is not None:
            events.close()
            self._set_events_state(state)

    def _set_events_state(self, state: str) -> None:
        with self._lock:
            self._events_state = state

    def _loop(self, stop: threading.Event) -> None:
        next_full = next_listing = 0.0
        while not stop.is_set():
            with self._lock:
                full = self._full_refresh_due or time.monotonic() >= next_full
                self._full_refresh_due = False
                interval = float(self._args.refresh_interval)
            if full or (self._events is None and time.monotonic() >= next_listing):
                self._refresh(full)
                next_listing = time.monotonic() + _SCAN_INTERVAL
                if full:
                    next_full = time.monotonic() + interval
            self._expire_exited()
            self._publish_if_due()
            deadline = min(next_full, self._next_timer())
            if self._events is None:
                stop.wait(max(0.0, min(deadline, next_listing) - time.monotonic()))
            else:
                self._drain(min(_STOP_POLL, max(0.0, deadline - time.monotonic())))

    def _next_timer(self) -> float:
        """When the next export or expiry of an exited process is due."""
        with self._lock:
            due = math.inf
            if self._changed_at is not None:
                due = max(self._changed_at + _EXPORT_DELAY, self._exported_at + _EXPORT_INTERVAL)
            if self._exited:
                due = min(due, min(self._exited.values()) + self._exit_grace)
            return due

    # ---- events -------------------------------------------------------------------------

    def _drain(self, timeout: float) -> None:
        """Apply what the connector reports within ``timeout``; on failure, list instead."""
        if self._events is None:
            return
        try:
            batch = self._events.read(timeout)
        except DiscoveryError as exc:
            log.warning(
                "%s: %s; listing %s every second instead", self._options.id, exc, self._proc_root
            )
            self._unsubscribe(f"failed: {exc}")
            with self._lock:
                self._full_refresh_due = True
            return
        with self._lock:
            self._event_counts = dict(self._events.counts)  # for debug_info's thread
        self._apply(batch)

    def _apply(self, batch: list[ProcEvent]) -> None:
        """Read each process started in ``batch`` once, after its last fork or exec; one
        that exits later in the batch is gone already and counted ``missed``."""
        started: dict[int, int] = {}  # pid -> index of its last fork or exec
        exited: dict[int, int] = {}  # pid -> index of its last exit
        for index, event in enumerate(batch):
            if event.kind is ProcEventKind.EXIT:
                exited[event.pid] = index
            elif event.kind is ProcEventKind.OVERRUN:
                self._note_overrun()
            else:
                started.pop(event.pid, None)
                started[event.pid] = index
        for pid, index in started.items():
            if exited.get(pid, -1) > index:
                self._forget(pid, "missed")
            else:
                self._read_started(pid)
        now = time.monotonic()
        for pid, index in exited.items():
            if started.get(pid, -1) < index:
                self._mark_exited(pid, now)

    def _read_started(self, pid: int) -> None:
        """Read a process the kernel just reported; its old labels, if any, are stale."""
        with self._lock:
            config = self._args.discover_config
        try:
            labels = _read_process(self._proc_root, pid, config)
        except _Skip as skip:
            self._note_skip(pid, skip)
            self._forget(pid, "missed" if skip.vanished else "skipped")
            return
        self._put_process(pid, labels)

    def _put_process(self, pid: int, labels: dict[str, str]) -> None:
        with self._lock:
            self._skipped.discard(pid)
            self._exited.pop(pid, None)
            if self._processes.get(pid) != labels:
                self._processes[pid] = labels
                self._note_change()

    def _forget(self, pid: int, reason: str) -> None:
        """Drop a process whose current program could not be read; count why."""
        with self._lock:
            self._counts[reason] += 1
            self._skipped.add(pid)
            self._exited.pop(pid, None)
            if self._processes.pop(pid, None) is not None:
                self._note_change()

    def _note_skip(self, pid: int, skip: _Skip) -> None:
        """A process that cannot be read is logged once (a full refresh meets it again
        every ``refresh_interval``), and counted each time."""
        if not skip.reason:
            return
        if self._skip_counter is not None:
            self._skip_counter.inc()
        with self._lock:
            first = pid not in self._skip_logged
            self._skip_logged.add(pid)
        level = logging.WARNING if first else logging.DEBUG
        log.log(level, "%s: pid %d skipped: %s", self._options.id, pid, skip.reason)

    def _mark_exited(self, pid: int, now: float) -> None:
        with self._lock:
            self._skipped.discard(pid)  # the pid may be reused
            self._skip_logged.discard(pid)
            if pid in self._processes:
                self._exited.setdefault(pid, now)

    def _note_overrun(self) -> None:
        """Events were lost: what they would have said is found by a full rescan."""
        with self._lock:
            self._counts["overruns"] += 1
            self._full_refresh_due = True

    def _expire_exited(self) -> None:
        deadline = time.monotonic() - self._exit_grace
        with self._lock:
            for pid in [pid for pid, seen in self._exited.items() if seen <= deadline]:
                del self._exited[pid]
                self._processes.pop(pid, None)
                self._note_change()

    # ---- scans --------------------------------------------------------------------------

    def _refresh(self, full: bool) -> None:
        """List ``/proc``: read every process (``full``) or only new ones; processes no
        longer listed begin their grace. Events that arrive meanwhile are applied."""
        try:
            pids = _list_pids(self._proc_root)
        except OSError as exc:
            message = f"cannot list {self._proc_root}: {exc.strerror or exc}"
            self._published.set_health("unhealthy", message)
            return
        now = time.monotonic()
        with self._lock:
            config = self._args.discover_config
            if full:
                self._counts["full_refreshes"] += 1
                self._skipped = set()
                self._skip_logged &= pids  # the pids of processes gone may be reused
            for pid in self._processes.keys() - pids:
                self._exited.setdefault(pid, now)
            unread = pids - self._skipped if full else pids - self._processes.keys() - self._skipped
        for count, pid in enumerate(sorted(unread), 1):
            self._read_listed(pid, config)
            if count % _SCAN_DRAIN == 0:
                self._drain(0.0)
        if full or self._published.health().state != "healthy":
            with self._lock:
                alive = len(self._processes) - len(self._exited)
            self._published.set_health("healthy", f"{alive} processes")

    def _read_listed(self, pid: int, config: DiscoverConfig) -> None:
        """A process that a scan listed; one that cannot be read is skipped until the next
        full refresh, and begins its grace if it was a target."""
        try:
            labels = _read_process(self._proc_root, pid, config)
        except _Skip as skip:
            self._note_skip(pid, skip)
            with self._lock:
                self._skipped.add(pid)
                if pid in self._processes:
                    self._exited.setdefault(pid, time.monotonic())
            return
        self._put_process(pid, labels)

    # ---- exports ------------------------------------------------------------------------

    def _note_change(self) -> None:
        """Called with the lock held: the targets differ from the last export."""
        if self._changed_at is None:
            self._changed_at = time.monotonic()

    def _publish_if_due(self) -> None:
        with self._lock:
            if self._changed_at is None:
                return
            due = max(self._changed_at + _EXPORT_DELAY, self._exported_at + _EXPORT_INTERVAL)
        if time.monotonic() >= due:
            self._publish()

    def _publish(self) -> None:
        with self._lock:
            processes = [self._processes[pid] for pid in sorted(self._processes)]
            targets = _join_targets(processes, self._args.join)
            self._changed_at = None
            self._exported_at = time.monotonic()
        self._published.publish(targets)


def _list_pids(proc_root: str) -> set[int]:
    with os.scandir(proc_root) as entries:
        return {int(entry.name) for entry in entries if entry.name.isdigit()}


def _read_process(proc_root: str, pid: int, config: DiscoverConfig) -> dict[str, str]:
    """The labels of one process; raises ``_Skip`` for kernel threads and failed reads."""
    base = os.path.join(proc_root, str(pid))
    stat_line = _read(pid, os.path.join(base, "stat"), _STAT_LIMIT)
    if _is_kernel_thread(stat_line):
        raise _Skip
    labels = {LABEL_PID: str(pid)}
    if config.exe:
        _put(labels, LABEL_EXE, _text(_readlink(pid, os.path.join(base, "exe"))))
    if config.cwd:
        _put(labels, LABEL_CWD, _text(_readlink(pid, os.path.join(base, "cwd"))))
    if config.commandline:
        cmdline = _read(pid, os.path.join(base, "cmdline"), _CMDLINE_LIMIT)
        _put(labels, LABEL_COMMANDLINE, _text(b" ".join(a for a in cmdline.split(b"\0") if a)))
    if config.username or config.uid:
        _put_user(labels, pid, os.path.join(base, "status"), config)
    if config.container_id or config.cgroup_path:
        cgroup = _text(_read(pid, os.path.join(base, "cgroup"), _CGROUP_LIMIT))
        if config.container_id:
            _put(labels, LABEL_CONTAINER_ID, parse_container_id(cgroup) or "")
        if config.cgroup_path:
            _put(labels, LABEL_CGROUP_PATH, "|".join(cgroup.splitlines()))
    return labels


def _is_kernel_thread(stat_line: bytes) -> bool:
    """PF_KTHREAD in the flags (field 9), counted after the command's last ``)``."""
    try:
        flags = int(stat_line[stat_line.rindex(b")") + 2 :].split()[6])
    except (ValueError, IndexError):
        return False
    return bool(flags & _PF_KTHREAD)


def _put_user(labels: dict[str, str], pid: int, path: str, config: DiscoverConfig) -> None:
    """UID and user name only log on failure; they never skip the process (as in Alloy)."""
    try:
        status = _read(pid, path, _STATUS_LIMIT)
    except _Skip as skip:
        log.debug("pid %d: no user: %s", pid, skip.reason or "it exited")
        return
    line = next((line for line in status.splitlines() if line.startswith(b"Uid:")), b"")
    fields = line.split()
    if len(fields) < 2 or not fields[1].isdigit():
        return
    uid = fields[1].decode()
    if config.uid:
        labels[LABEL_UID] = uid
    if config.username:
        try:
            labels[LABEL_USERNAME] = pwd.getpwuid(int(uid)).pw_name
        except (KeyError, OverflowError):
            pass  # an unknown UID leaves the label out


def _read(pid: int, path: str, limit: int) -> bytes:
    """At most ``limit`` bytes of a regular file, never blocking: a captured tree may hold
    a FIFO or a link to a device where ``/proc`` has a file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise _skip(pid, path, exc) from exc
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _skip(pid, path, "not a regular file")
        chunks: list[bytes] = []
        size = 0
        while size < limit:
            chunk = os.read(fd, limit - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise _skip(pid, path, exc) from exc
    finally:
        os.close(fd)


def _readlink(pid: int, path: str) -> bytes:
    try:
        return os.readlink(os.fsencode(path))
    except OSError as exc:
        raise _skip(pid, path, exc) from exc


def _skip(pid: int, path: str, problem: OSError | str) -> _Skip:
    """Vanished processes are skipped silently; other failures say why."""
    if isinstance(problem, FileNotFoundError | ProcessLookupError):
        return _Skip(vanished=True)
    reason = problem if isinstance(problem, str) else problem.strerror or str(problem)
    return _Skip(reason=f"cannot read {path}: {reason}")


def _skip_counter(options: ComponentOptions) -> Any:
    return component_counter(
        options,
        "emberscope_discovery_process_skipped",
        "Processes discovery.process left out because a file of theirs under /proc "
        "could not be read, counted at each attempt (each process is logged once).",
    )


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
    return container_id_of(target) or ""
