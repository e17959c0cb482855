"""The sampling core: keeps the kernel's pid map in line with what userspace
wants, and routes each drained, symbolized stack to where it belongs.

The kernel reports each process it has not been told about; a classifier
decides which destinations (profiles being built) want it, if any; each
:meth:`Profiler.collect` drains the session, symbolizes every unique stack
once and hands it to the destinations of its pid.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from agent.ebpf import (
    NativeMode,
    PidEvent,
    PidEventType,
    PidState,
    PyGil,
    PythonStack,
    RawSample,
    Session,
)
from agent.errors import ProcessError
from agent.pprof import ProfileBuilder
from agent.python import PythonProcesses
from agent.symbols import Frame, Symbolizer
from agent.symbols.cache import LruCache
from agent.symbols.procmaps import MapEntry, read_process_entry, read_stat_fields
from agent.unwind.processes import NativeUnwinder

__all__ = [
    "Destination",
    "ProcessProfile",
    "ProcessSelection",
    "Profiler",
    "read_comm",
    "read_ppid",
]

log = logging.getLogger(__name__)

_MAX_ANCESTRY = 64
# A process maps its shared libraries while it starts (the dynamic loader
# runs after exec). Its maps are re-read on each poll for this long, so that
# a short-lived process that exits before the next collection still resolves.
_SETTLE_S = 1.0
_SETTLE_EVERY_S = 0.2
# Resolved user stacks kept from one collection to the next: the hot stacks of
# a process recur, and resolving one (more so merging its Python frames) costs
# tens of microseconds. About 5 MB when full.
_STACK_CACHE_SIZE = 4096
# How long a process that matches nothing stays pending before it is ignored:
# discovery may not have seen it yet (discovery.process looks every second),
# and its samples are held meanwhile, so none are lost while the agent learns.
_PENDING_S = 5.0
# How often the mappings of a sampled process are read again for its unwind
# tables in any case, and the longest wait between two reads the kernel asks
# for (its walk met an address in no known mapping: a library loaded with
# dlopen(), or a walk gone astray; the wait doubles from _MAPPINGS_WAIT_S
# each time a read finds nothing new).
_UNWIND_REFRESH_S = 60.0
_MAPPINGS_WAIT_S = 0.25
_UNKNOWN = "[unknown]"  # the name of a frame in no mapping the symbolizer knows
# Whether a Python thread held the GIL when sampled: a pprof label of its samples.
_GIL_LABELS = {PyGil.HELD: {"gil": "held"}, PyGil.RELEASED: {"gil": "released"}}
_NO_LABELS: Mapping[str, str] = {}


class Destination(Protocol):
    """Where the samples of some processes go: one profile being built."""

    collect_user: bool
    collect_kernel: bool

    def add(
        self,
        process: PidEvent,
        kernel: Sequence[Frame],
        user: Sequence[Frame],
        count: int,
        labels: Mapping[str, str],
    ) -> None:
        """``labels`` are the sample's own (``gil``), beside those of its target."""


_UserStackKey = tuple[int, tuple[int, ...], PythonStack | None]  # pid, addresses, Python
# what the kernel saw of a process -> the destinations that want it; empty: not profiled
Classifier = Callable[[PidEvent], Sequence[Destination]]


def read_ppid(pid: int, proc_root: str = "/proc") -> int:
    """The parent of ``pid`` from ``/proc/<pid>/stat``; 0 when it is gone."""
    try:
        fields = read_stat_fields(pid, proc_root)
    except ProcessError:
        return 0
    return int(fields[1]) if len(fields) > 1 else 0


def read_comm(pid: int, proc_root: str = "/proc") -> str:
    try:
        return read_process_entry(pid, "comm", proc_root).decode(errors="replace").strip()
    except ProcessError:
        return ""


@dataclass
class ProcessSelection:
    """Which processes ``emberscope profile`` samples: all, given pids, or
    descendants of roots.

    Descendants are found by walking parents. Orphans of a root's subtree are
    reparented to ``reaper`` (the agent, made a child subreaper), so a
    process whose parent is ``reaper`` descends from a root too.
    """

    all_processes: bool = False
    pids: frozenset[int] = frozenset()
    roots: set[int] = field(default_factory=set)
    reaper: int = 0
    proc_root: str = "/proc"

    def matches(self, pid: int, ppid: int, members: Collection[int] = ()) -> bool:
        if self.all_processes or pid in self.pids or pid in self.roots:
            return True
        if not self.roots:
            return False
        parent = ppid or read_ppid(pid, self.proc_root)
        for _ in range(_MAX_ANCESTRY):
            if parent <= 1:
                return False
            if parent in self.roots or parent in members or parent == self.reaper:
                return True
            parent = read_ppid(parent, self.proc_root)
        return False


class ProcessProfile:
    """One profile of many processes, each sample labelled with ``pid`` and ``comm``
    (and ``gil`` for Python threads).

    ``comm`` is the command name the kernel saw at the process's first
    sample, so a process that exited before the profile is written keeps it.
    """

    def __init__(
        self,
        builder: ProfileBuilder,
        collect_user: bool = True,
        collect_kernel: bool = True,
        proc_root: str = "/proc",
    ) -> None:
        self.builder = builder
        self.collect_user = collect_user
        self.collect_kernel = collect_kernel
        self._proc_root = proc_root
        self._comms: dict[int, str] = {}

    def add(
        self,
        process: PidEvent,
        kernel: Sequence[Frame],
        user: Sequence[Frame],
        count: int,
        labels: Mapping[str, str],
    ) -> None:
        pid = process.pid
        if pid not in self._comms:
            self._comms[pid] = process.comm or read_comm(pid, self._proc_root)
        labels = {"pid": str(pid), "comm": self._comms[pid], **labels}
        self.builder.add_sample([*kernel, *user], count, labels)


class Profiler:
    """Decides, per process, where its samples go, and collects them."""

    def __init__(
        self,
        session: Session,
        symbolizer: Symbolizer,
        classify: Classifier,
        python: PythonProcesses | None = None,
        unwinder: NativeUnwinder | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._session = session
        self._clock = clock
        self._unwinder = unwinder
        # pid -> when its mappings were last read, and how long to wait before the next
        self._unwind_refreshed: dict[int, tuple[float, float]] = {}
        self._symbolizer = symbolizer
        self._classify = classify
        self._python = python
        self._routes: dict[int, tuple[Destination, ...]] = {}  # empty tuple: ignored
        self._pending: dict[int, float] = {}  # pid -> when it was first seen, undecided
        self._held: dict[int, list[RawSample]] = {}  # drained samples of pending pids
        self.unattributed: Counter[str] = Counter()  # samples routed nowhere, by reason
        self._exited: set[int] = set()
        self._facts: dict[int, PidEvent] = {}  # what the kernel saw at first sight
        self._settling: dict[int, float] = {}  # pid -> when it was first seen
        self._settled_at = float("-inf")  # when the settling processes were last read
        self._user_stacks: LruCache[_UserStackKey, list[Frame]] = LruCache(_STACK_CACHE_SIZE)

    def set_unwinder(self, unwinder: NativeUnwinder) -> None:
        """Walk the user stacks of processes profiled from now on with unwind tables."""
        self._unwinder = unwinder

    @property
    def profiled(self) -> Collection[int]:
        return [pid for pid, routes in self._routes.items() if routes]

    def add(self, pid: int, destinations: Sequence[Destination]) -> None:
        """Profile ``pid`` from now on, whether or not the kernel has seen it."""
        self._start_profiling(pid, tuple(destinations), tracked_only=False)

    def user_stack_cache_stats(self) -> dict[str, int]:
        """The resolved-stack cache's size, fill, hits, misses and evictions."""
        return self._user_stacks.stats()

    def poll(self, timeout_ms: int = 0) -> None:
        """Handle the pid events the kernel has reported."""
        for event in self._session.poll_events(timeout_ms):
            self._handle(event)
        self._refresh_settling()
        self._expire_pending()
        if self._python is not None:
            self._python.keep_line_tables()
            self._python.retry()

    def reclassify(self) -> None:
        """Decide again for every known process: the targets have changed. One that
        exited keeps its routes until the collection that takes its last samples:
        they were taken while it matched them, and its target may leave with it
        (discovery drops an exited process before the next collection)."""
        for pid in [*self._routes, *self._pending]:
            if pid not in self._exited or not self._routes.get(pid):
                self._decide(pid)

    def _expire_pending(self) -> None:
        deadline = self._clock() - _PENDING_S
        for pid in [pid for pid, seen in self._pending.items() if seen < deadline]:
            if not self._decide(pid, wait=False):
                self._count_unattributed(self._held.pop(pid, []))
                self._forget_pending(pid)

    def _handle(self, event: PidEvent) -> None:
        pid = event.pid
        if event.type is PidEventType.NEW:
            self._facts[pid] = event
            self._decide(pid)
        elif event.type is PidEventType.EXEC:
            self._facts[pid] = event  # a new command name, maybe a new cgroup
            if self._routes.get(pid):
                self._exec(pid)
        elif event.type is PidEventType.EXIT:
            self._exited.add(pid)
        elif event.type is PidEventType.MAPPINGS and self._routes.get(pid):
            self._refresh_native([pid], now=True)

    def _exec(self, pid: int) -> None:
        """A new program image: its old mappings mean nothing any more, and it may
        belong elsewhere now (discovery matches executables)."""
        self._stop_profiling(pid)
        self._decide(pid)

    def facts(self, pid: int) -> PidEvent:
        """What the kernel reported of ``pid`` at its first sample or its last exec,
        or its pid alone."""
        return self._facts.get(pid) or PidEvent(PidEventType.NEW, pid)

    def _decide(self, pid: int, *, wait: bool = True) -> tuple[Destination, ...]:
        destinations = tuple(self._classify(self.facts(pid)))
        if not destinations and wait and pid not in self._routes:
            # Never decided: wait a little for discovery before ignoring it.
            first_seen = self._pending.get(pid)
            if first_seen is None:
                first_seen = self._pending[pid] = self._clock()
                self._prepare_pending(pid)
            if self._clock() - first_seen <= _PENDING_S:
                return ()
        self._pending.pop(pid, None)
        if destinations and not self._routes.get(pid):
            self._start_profiling(pid, destinations)
        else:
            self._route(pid, destinations)
        return destinations

    def _prepare_pending(self, pid: int) -> None:
        """Read the maps of a process that waits for discovery: one that lives a few
        hundred milliseconds is gone when it is decided, and its held samples are
        named from what is read now. It is walked whole from now on when the tables
        of its files are loaded already (another process of the same program)."""
        try:
            entries = self._symbolizer.add_process(pid)
            if self._unwinder is not None and self._unwinder.add(pid, entries, placed_only=True):
                self._unwind_refreshed[pid] = (self._clock(), 0.0)
        except ProcessError as exc:
            log.debug("user frames of pid %d cannot be named: %s", pid, exc.reason)

    def _forget_pending(self, pid: int) -> None:
        """What ``_prepare_pending`` kept of a process that matched no target."""
        self._symbolizer.forget(pid)
        if self._unwinder is not None:
            self._unwinder.forget(pid)
        self._unwind_refreshed.pop(pid, None)

    def _start_profiling(
        self, pid: int, destinations: tuple[Destination, ...], *, tracked_only: bool = True
    ) -> None:
        """Open what naming ``pid``'s frames needs, then let the kernel count it.

        A process whose maps cannot be read (gone already, another user
        namespace) is still counted: its user frames stay addresses.
        """
        entries = None
        try:
            entries = self._symbolizer.add_process(pid)
        except ProcessError as exc:
            log.debug("user frames of pid %d cannot be named: %s", pid, exc.reason)
        # Python first: the kernel then walks its frames from its first profiled sample
        if self._python is not None:
            self._python.add(pid)
        self._route(pid, destinations, tracked_only=tracked_only)
        self._start_native(pid, entries)

    def _stop_profiling(self, pid: int) -> None:
        """Forget what was kept of ``pid``'s program image (exit, exec)."""
        self._symbolizer.forget(pid)
        self._drop_user_stacks(pid)
        if self._python is not None:
            self._python.forget(pid)
        if self._unwinder is not None:
            self._unwinder.forget(pid)
        self._unwind_refreshed.pop(pid, None)
        self._settling.pop(pid, None)
        self._routes.pop(pid, None)

    def _start_native(self, pid: int, entries: list[MapEntry] | None) -> None:
        """Walk ``pid``'s user stacks with its files' unwind tables from now on
        (``entries``: its executable mappings, as the symbolizer read them)."""
        if self._unwinder is None:
            return
        try:
            self._unwinder.add(pid, entries)
        except ProcessError as exc:
            log.debug("no native unwinding for pid %d: %s", pid, exc.reason)
            self._session.set_native(pid, NativeMode.FRAME_POINTERS)
        self._unwind_refreshed[pid] = (self._clock(), 0.0)

    def _refresh_native(self, pids: Collection[int], *, now: bool = False) -> None:
        """Follow the mappings of processes walked with tables: when the kernel's
        walk met an unknown address (``now``: a library loaded with dlopen()),
        waiting longer each time that found nothing new; and every
        _UNWIND_REFRESH_S for the processes sampled (a library replaced in place)."""
        if self._unwinder is None:
            return
        at = self._clock()
        for pid in pids:
            last, wait = self._unwind_refreshed.get(pid, (at, 0.0))
            if pid not in self._unwind_refreshed or at - last < (
                wait if now else _UNWIND_REFRESH_S
            ):
                continue
            try:
                changed = self._unwinder.refresh(pid)
                if changed:  # open the new files now: the process may exit before collection
                    self._symbolizer.add_process(pid)
            except ProcessError:
                continue  # gone: its exit event forgets it
            wait = _MAPPINGS_WAIT_S if changed else min(2 * wait, _UNWIND_REFRESH_S)
            self._unwind_refreshed[pid] = (at, wait)

    def _route(
        self, pid: int, destinations: tuple[Destination, ...], *, tracked_only: bool = True
    ) -> None:
        """Route ``pid``'s samples and tell the kernel. A decision made after
        the process exited changes nothing in the kernel (see Session.set_pid)."""
        if destinations and not self._routes.get(pid):
            self._settling[pid] = self._clock()
        self._routes[pid] = destinations
        if destinations:
            self._session.set_pid(
                pid,
                PidState.PROFILE,
                collect_user=any(d.collect_user for d in destinations),
                collect_kernel=any(d.collect_kernel for d in destinations),
                tracked_only=tracked_only,
            )
        else:
            self._session.set_pid(pid, PidState.IGNORE, tracked_only=tracked_only)

    def _refresh_settling(self) -> None:
        """Read again the maps of processes that started less than _SETTLE_S ago,
        every _SETTLE_EVERY_S at most (events wake the poll far more often); not
        those just read."""
        now = self._clock()
        if now - self._settled_at < _SETTLE_EVERY_S:
            return
        self._settled_at = now
        for pid, since in list(self._settling.items()):
            if now - since < _SETTLE_EVERY_S:
                continue
            if now - since > _SETTLE_S or not self._reread_maps(pid):
                del self._settling[pid]

    def _reread_maps(self, pid: int) -> bool:
        """Open the files ``pid`` mapped since; False when it is gone."""
        try:
            entries = self._symbolizer.add_process(pid)
            if self._unwinder is not None:
                self._unwinder.refresh(pid, entries)
        except ProcessError:
            return False
        return True

    def collect(self) -> int:
        """Drain the kernel's counts into the destinations; return the samples routed."""
        self.poll(0)
        exited, self._exited = self._exited, set()
        routed = 0
        # per unique stack: a native stack recurs under many Python stacks
        native_frames: dict[tuple[int, tuple[int, ...]], list[Frame]] = {}
        user_frames: dict[_UserStackKey, list[Frame]] = {}
        kernel_frames: dict[tuple[int, ...], list[Frame]] = {}
        samples = self._take_samples()
        for sample in samples:
            destinations = self._destinations(sample.pid)
            if not destinations:
                if sample.pid in self._pending:
                    self._held.setdefault(sample.pid, []).append(sample)
                else:
                    self._count_unattributed([sample])
                continue
            user_key = (sample.pid, sample.user_stack, sample.python_stack)
            if user_key not in user_frames:
                user_frames[user_key] = self._user_frames(sample, native_frames)
            kernel_key = sample.kernel_stack
            if kernel_key not in kernel_frames:
                kernel_frames[kernel_key] = self._symbolizer.resolve_kernel(kernel_key)
            process = self.facts(sample.pid)
            for destination in destinations:
                destination.add(
                    process,
                    kernel_frames[kernel_key] if destination.collect_kernel else (),
                    user_frames[user_key] if destination.collect_user else (),
                    sample.count,
                    _GIL_LABELS.get(sample.gil, _NO_LABELS),
                )
            routed += sample.count
        self._refresh_native({sample.pid for sample in samples})
        for pid in exited:
            if pid in self._pending:
                self._exited.add(pid)  # its held samples still wait for a decision
            else:
                self._forget(pid)
        return routed

    def _user_frames(
        self, sample: RawSample, native_frames: dict[tuple[int, tuple[int, ...]], list[Frame]]
    ) -> list[Frame]:
        key = (sample.pid, sample.user_stack, sample.python_stack)
        frames = self._user_stacks.get(key)
        if frames is not None:
            return frames
        native_key = (sample.pid, sample.user_stack)
        frames = native_frames.get(native_key)
        if frames is None:
            frames = native_frames[native_key] = self._symbolizer.resolve_user(*native_key)
        if sample.python_stack is not None and self._python is not None:
            frames = self._python.merge(sample.pid, frames, sample.python_stack)
        # Not kept while its libraries may still be loading, nor with a frame
        # that named no file: a library mapped since (dlopen) is named later.
        if sample.pid not in self._settling and not any(
            f.name.startswith(_UNKNOWN) for f in frames
        ):
            self._user_stacks.put(key, frames)
        return frames

    def _count_unattributed(self, samples: list[RawSample]) -> None:
        """Samples of processes that match no target: counted, never silently gone."""
        self.unattributed["no_target"] += sum(sample.count for sample in samples)

    def _take_samples(self) -> list[RawSample]:
        """The drained samples, and the held ones of processes decided since."""
        samples = self._session.drain()
        for pid in [pid for pid in self._held if pid not in self._pending]:
            samples.extend(self._held.pop(pid))
        return samples

    def _destinations(self, pid: int) -> tuple[Destination, ...]:
        if pid in self._routes:
            return self._routes[pid]
        # Its event was lost or not read yet: decide now.
        return self._decide(pid)

    def _drop_user_stacks(self, pid: int) -> None:
        for key, _ in self._user_stacks.items():
            if key[0] == pid:
                self._user_stacks.pop(key)

    def _forget(self, pid: int) -> None:
        self._stop_profiling(pid)
        self._facts.pop(pid, None)
