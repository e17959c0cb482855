"""The container of a process, from the text of ``/proc/<pid>/cgroup``.

Rules: the innermost 64-hex ID of a path, the ``0::``
line before v1 lines, conmon monitors never credited to their container, and a cache keyed
by (pid, start time) because PIDs are reused.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from dataclasses import dataclass

from agent.errors import ProcessError
from agent.symbols.cache import LruCache
from agent.symbols.procmaps import read_process_entry, read_stat_fields

__all__ = [
    "CgroupInfo",
    "ContainerIdCache",
    "only_unified_cgroups",
    "parse_cgroup",
    "parse_container_id",
]

log = logging.getLogger(__name__)

# hierarchy-ID ":" controllers without colons ":" path (the path may hold colons).
_LINE = re.compile(r"(\d+):([^:]*):(.*)")
_ID = re.compile(r"(?<=[/:-])[0-9a-f]{64}(?=[./]|\Z)")
_RUNTIME = re.compile(r"([a-z]+(?:-[a-z]+)*)[-:]\Z")
_POD_UID = re.compile(
    r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})"
)


@dataclass(frozen=True, slots=True)
class CgroupInfo:
    """What a cgroup file tells about a process; each part may be absent.

    ``runtime`` is the prefix before the ID without its separator (``docker``,
    ``cri-containerd``, ``crio``, ``libpod``, ``crio-conmon``); cgroupfs paths have none.
    """

    container_id: str | None = None
    runtime: str | None = None
    pod_uid: str | None = None

    @property
    def is_conmon(self) -> bool:
        """A CRI-O or Podman monitor process, whose cgroup repeats its container's ID."""
        return self.runtime is not None and self.runtime.endswith("-conmon")


def parse_cgroup(cgroup_text: str) -> CgroupInfo:
    """Parse the whole text of ``/proc/<pid>/cgroup`` (v1, v2 or hybrid)."""
    v2_hit: tuple[str, str | None] | None = None
    v1_hit: tuple[str, str | None] | None = None
    for line in cgroup_text.splitlines():
        match = _LINE.fullmatch(line.rstrip("\r"))
        if match is None:
            continue
        hit = _parse_path(match.group(3))
        if hit is None:
            continue
        if match.group(1) == "0" and match.group(2) == "":
            v2_hit = v2_hit or hit
        else:
            v1_hit = v1_hit or hit
    pods = _POD_UID.findall(cgroup_text)
    pod_uid = pods[-1].replace("_", "-") if pods else None
    container_id, runtime = v2_hit or v1_hit or (None, None)
    return CgroupInfo(container_id, runtime, pod_uid)


def _parse_path(path: str) -> tuple[str, str | None] | None:
    """The innermost (last) container ID of a path and its runtime prefix."""
    matches = list(_ID.finditer(path))
    if not matches:
        return None
    last = matches[-1]
    component = path[: last.start()].rsplit("/", 1)[-1]
    runtime = _RUNTIME.search(component)
    return last.group(), runtime.group(1) if runtime else None


def parse_container_id(cgroup_text: str) -> str | None:
    """The container ID of the process, or None for host processes and conmon monitors."""
    info = parse_cgroup(cgroup_text)
    return None if info.is_conmon else info.container_id


def only_unified_cgroups(proc_root: str = "/proc") -> bool:
    """Whether this host has the cgroup v2 hierarchy alone (``/proc/self/cgroup`` is
    one ``0::`` line): then a process's v2 cgroup says all there is of its container."""
    try:
        text = read_process_entry(os.getpid(), "cgroup", proc_root).decode("utf-8", "replace")
    except ProcessError:
        return False
    lines = text.splitlines()
    return len(lines) == 1 and lines[0].startswith("0::")


def _read_start_time(proc_root: str, pid: int) -> int:
    """The start time of ``pid`` in clock ticks since boot; ProcessError when it is gone."""
    return int(read_stat_fields(pid, proc_root)[19])


class ContainerIdCache:
    """LRU of pid → container ID (misses too, as None), checked against process start time.

    Example::

        cache = ContainerIdCache(1024)
        cache.lookup(4242)   # "3f1c…" or None
        cache.forget(4242)   # on process exit
    """

    def __init__(self, size: int, proc_root: str = "/proc") -> None:
        if size < 1:
            raise ValueError(f"container ID cache size must be at least 1, got {size}")
        self.size = size
        self.proc_root = proc_root
        # (pid, its start time) -> its container ID, "" for none: a reused pid is another key
        self._entries: LruCache[tuple[int, int], str] = LruCache(size)
        self._lock = threading.Lock()

    def lookup(self, pid: int) -> str | None:
        """The container ID of ``pid``; None for a host process or one already gone."""
        try:
            start_time = _read_start_time(self.proc_root, pid)
        except (ProcessError, ValueError, IndexError):
            return None
        with self._lock:
            cached = self._entries.get((pid, start_time))
        if cached is not None:
            return cached or None
        return self._read(pid, start_time)

    def _read(self, pid: int, start_time: int) -> str | None:
        try:
            # A bounded read of a regular file: nothing in /proc/<pid> can block it.
            text = read_process_entry(pid, "cgroup", self.proc_root).decode("utf-8", "replace")
            # The pid may have been reused while we read; then cache nothing.
            unchanged = _read_start_time(self.proc_root, pid) == start_time
        except (ProcessError, ValueError, IndexError) as exc:
            log.debug("no container ID for pid %d: %s", pid, exc)
            return None
        container_id = parse_container_id(text)
        if unchanged:
            self._store(pid, start_time, container_id)
        return container_id

    def _store(self, pid: int, start_time: int, container_id: str | None) -> None:
        with self._lock:
            self._entries.put((pid, start_time), container_id or "")

    def forget(self, pid: int) -> None:
        with self._lock:
            for key, _ in self._entries.items():
                if key[0] == pid:
                    self._entries.pop(key)

    @property
    def hits(self) -> int:
        return self._entries.hits

    @property
    def misses(self) -> int:
        return self._entries.misses

    def __len__(self) -> int:
        return len(self._entries)

    def debug_info(self) -> dict[str, object]:
        """Size, counters and every entry, for the debug endpoint."""
        with self._lock:
            entries = {pid: cid or None for (pid, _), cid in self._entries.items()}
        return {"size": self.size, "hits": self.hits, "misses": self.misses, "entries": entries}
