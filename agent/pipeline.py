"""Wires the rooms together: sampled pids in, symbolized pprof samples out.

The kernel reports each process it has not been told about; a
:class:`ProcessSelection` decides whether it is profiled; each
:meth:`Profiler.collect` drains the session, symbolizes every unique stack
once and adds it to a :class:`~agent.pprof.ProfileBuilder`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection
from dataclasses import dataclass, field

from agent.ebpf import PidEvent, PidEventType, PidState, RawSample, Session
from agent.errors import ProcessError
from agent.pprof import ProfileBuilder
from agent.symbols import Frame, Symbolizer

__all__ = ["ProcessSelection", "Profiler", "read_ppid"]

log = logging.getLogger(__name__)

_MAX_ANCESTRY = 64
# A process maps its shared libraries while it starts (the dynamic loader
# runs after exec). Its maps are re-read on each poll for this long, so that
# a short-lived process that exits before the next collection still resolves.
_SETTLE_S = 1.0


def read_ppid(pid: int, proc_root: str = "/proc") -> int:
    """The parent of ``pid`` from ``/proc/<pid>/stat``; 0 when it is gone."""
    try:
        with open(f"{proc_root}/{pid}/stat", "rb") as stream:
            stat = stream.read()
    except OSError:
        return 0
    # The command name may hold spaces and parentheses: fields follow the last ')'.
    fields = stat[stat.rfind(b")") + 2 :].split()
    return int(fields[1]) if len(fields) > 1 else 0


@dataclass
class ProcessSelection:
    """Which processes to profile: all, given pids, or descendants of roots.

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


class Profiler:
    """Keeps the kernel's pid map in line with a selection and collects samples."""

    def __init__(self, session: Session, symbolizer: Symbolizer, selection: ProcessSelection):
        self._session = session
        self._symbolizer = symbolizer
        self._selection = selection
        self._profiled: dict[int, str] = {}  # pid -> comm
        self._ignored: set[int] = set()
        self._exited: set[int] = set()
        self._settling: dict[int, float] = {}  # pid -> when it was first seen

    @property
    def profiled(self) -> Collection[int]:
        return self._profiled.keys()

    def add(self, pid: int) -> None:
        """Profile ``pid`` from now on; raise ProcessError if it does not exist."""
        self._symbolizer.add_process(pid)
        self._profiled[pid] = _read_comm(pid, self._selection.proc_root)
        self._settling[pid] = time.monotonic()
        self._session.set_pid(pid, PidState.PROFILE)

    def poll(self, timeout_ms: int = 0) -> None:
        """Handle the pid events the kernel has reported."""
        for event in self._session.poll_events(timeout_ms):
            self._handle(event)
        self._refresh_settling()

    def _refresh_settling(self) -> None:
        now = time.monotonic()
        for pid, since in list(self._settling.items()):
            try:
                if now - since > _SETTLE_S:
                    raise ProcessError(pid, "settled")
                self._symbolizer.add_process(pid)
            except ProcessError:
                del self._settling[pid]

    def _handle(self, event: PidEvent) -> None:
        pid = event.pid
        if event.type is PidEventType.NEW:
            self._classify(pid, event.ppid)
        elif event.type is PidEventType.EXEC and pid in self._profiled:
            # A new program image: its old mappings mean nothing any more.
            self._symbolizer.forget(pid)
            self._track(pid)
        elif event.type is PidEventType.EXIT:
            self._exited.add(pid)

    def _classify(self, pid: int, ppid: int) -> bool:
        if self._selection.matches(pid, ppid, self._profiled.keys()):
            self._track(pid)
            self._session.set_pid(pid, PidState.PROFILE)
            return True
        self._ignored.add(pid)
        self._session.set_pid(pid, PidState.IGNORE)
        return False

    def _track(self, pid: int) -> None:
        self._profiled[pid] = _read_comm(pid, self._selection.proc_root)
        self._settling[pid] = time.monotonic()
        try:
            self._symbolizer.add_process(pid)
        except ProcessError as exc:
            # Gone already: its samples keep the addresses it had.
            log.debug("cannot read a profiled process: %s", exc)

    def collect(self, builder: ProfileBuilder) -> int:
        """Drain the kernel's counts into ``builder``; return the samples added."""
        self.poll(0)
        exited, self._exited = self._exited, set()
        added = 0
        user_frames: dict[tuple[int, tuple[int, ...]], list[Frame]] = {}
        kernel_frames: dict[tuple[int, ...], list[Frame]] = {}
        for sample in self._session.drain():
            if not self._wanted(sample.pid):
                continue
            user_key = (sample.pid, sample.user_stack)
            if user_key not in user_frames:
                user_frames[user_key] = self._symbolizer.resolve_user(*user_key)
            if sample.kernel_stack not in kernel_frames:
                kernel_frames[sample.kernel_stack] = self._symbolizer.resolve_kernel(
                    sample.kernel_stack
                )
            frames = kernel_frames[sample.kernel_stack] + user_frames[user_key]
            builder.add_sample(frames, sample.count, self._labels(sample))
            added += sample.count
        for pid in exited:
            self._forget(pid)
        return added

    def _wanted(self, pid: int) -> bool:
        if pid in self._profiled:
            return True
        if pid in self._ignored:
            return False
        # Its event was lost or not read yet: decide now.
        return self._classify(pid, 0)

    def _labels(self, sample: RawSample) -> dict[str, str]:
        return {"pid": str(sample.pid), "comm": self._profiled.get(sample.pid, "")}

    def _forget(self, pid: int) -> None:
        self._symbolizer.forget(pid)
        self._settling.pop(pid, None)
        self._profiled.pop(pid, None)
        self._ignored.discard(pid)


def _read_comm(pid: int, proc_root: str) -> str:
    try:
        with open(f"{proc_root}/{pid}/comm") as stream:
            return stream.read().strip()
    except OSError:
        return ""
