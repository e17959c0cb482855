"""Unwind tables of profiled processes, loaded into the kernel's maps.

Each executable file a process maps gets its table once (by build ID, else
device and inode), placed in one span of the kernel's ``unwind_rows`` array
and shared by every process that maps the file. A process's executable
mappings point at those spans in ``unwind_mappings``; a mapping without a
table (JIT code, a file without CFI, no room left) is walked with frame
pointers. Files no process maps any more are evicted, least recently used
first, when room is needed.

    unwinder = NativeUnwinder(session, TableCache("/var/cache/emberscope/unwind"))
    unwinder.add(pid)       # before the pid is marked for native walking
    unwinder.refresh(pid)   # after dlopen(): new mappings get their tables
    unwinder.forget(pid)    # exit or exec
"""

from __future__ import annotations

import logging
import os
import time
from array import array
from bisect import bisect_right
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any, Protocol

from agent.errors import EmberscopeError
from agent.symbols.cache import LruCache
from agent.symbols.elf import LoadSegment, read_layout
from agent.symbols.procmaps import MapEntry, open_mapped_file, read_maps
from agent.unwind.cache import TableCache
from agent.unwind.table import UnwindTable, build_table

__all__ = ["DEFAULT_CACHE_DIRECTORY", "NativeUnwinder", "open_table_cache"]

DEFAULT_CACHE_DIRECTORY = "/var/cache/emberscope/unwind"

log = logging.getLogger(__name__)

# Rows per file the kernel's binary search covers (UNWIND_SEARCH_STEPS).
_MAX_FILE_ROWS = 1 << 21
_LAYOUT_CACHE_SIZE = 512  # files whose build ID and segments are kept
_FileKey = tuple[Any, ...]  # ("build-id", hex) or ("inode", dev, inode)


class UnwindSession(Protocol):
    """What the unwinder needs of agent.ebpf.Session."""

    def unwind_capacity(self) -> int: ...

    def write_unwind_rows(self, start: int, rows: bytes) -> None: ...

    def set_unwind_mapping(
        self, pid: int, start: int, end: int, bias: int, table_start: int, table_rows: int
    ) -> int: ...

    def delete_unwind_mapping(self, pid: int, start: int, end: int) -> None: ...

    def set_native(self, pid: int) -> bool: ...


@dataclass
class _File:
    """A file's table as placed in the kernel: rows [start, start + rows), and
    the bounds of the functions its FDEs cover."""

    path: str
    start: int
    rows: int
    build_s: float
    functions: array[int]
    function_ends: array[int]
    users: set[int] = field(default_factory=set)


@dataclass
class _Process:
    mappings: dict[tuple[int, int], _FileKey | None] = field(default_factory=dict)


class NativeUnwinder:
    """Keeps the kernel's unwind maps in line with the processes being profiled."""

    def __init__(self, session: UnwindSession, cache: TableCache | None = None) -> None:
        self._session = session
        self._cache = cache
        self._capacity = session.unwind_capacity()
        self._files: OrderedDict[_FileKey, _File] = OrderedDict()  # least recently used first
        self._failed: dict[_FileKey, str] = {}  # files whose table could not be had
        self._processes: dict[int, _Process] = {}
        # (device, inode) -> build ID and load segments
        self._layouts: LruCache[tuple[int, int, int], tuple[str, tuple[LoadSegment, ...]]] = (
            LruCache(_LAYOUT_CACHE_SIZE)
        )
        self.counters: Counter[str] = Counter()

    def add(
        self, pid: int, entries: list[MapEntry] | None = None, *, placed_only: bool = False
    ) -> bool:
        """Load the tables of ``pid``'s executable mappings (``entries``, else read)
        and mark it for native walking; False when it is gone. Raises ProcessError
        when its maps cannot be read.

        With ``placed_only``, nothing is built: ``pid`` is walked with tables only if
        every file it maps has its table in the kernel already (another process of the
        same program), else False. For a process not decided yet, at little cost.
        """
        if entries is None:
            entries = [e for e in read_maps(pid) if e.is_exec]
        if placed_only and not all(self._placed(pid, e) for e in entries if e.is_file):
            return False
        self._processes.setdefault(pid, _Process())
        self.refresh(pid, entries)
        if not self._session.set_native(pid):
            self.forget(pid)
            return False
        return True

    def refresh(self, pid: int, entries: list[MapEntry] | None = None) -> bool:
        """Follow ``pid``'s executable mappings (``entries``, else read again): tables
        for new ones, removal of unmapped ones; whether anything changed."""
        process = self._processes.get(pid)
        if process is None:
            return False
        if entries is None:
            entries = [e for e in read_maps(pid) if e.is_exec]
        current = {(e.start, e.end) for e in entries}
        gone = [span for span in process.mappings if span not in current]
        for span in gone:
            self._unmap(pid, process, span)
        new = [e for e in entries if (e.start, e.end) not in process.mappings]
        for entry in new:
            self._map(pid, process, entry)
        return bool(gone or new)

    def forget(self, pid: int) -> None:
        """Remove ``pid``'s mappings from the kernel (exit, exec)."""
        process = self._processes.pop(pid, None)
        if process is None:
            return
        for span in list(process.mappings):
            self._unmap(pid, process, span)

    def function_start(self, build_id: str, address: int) -> int | None:
        """The start of the function holding file address ``address`` of the file
        with ``build_id``, from its FDEs: it names code that has no symbol."""
        file = self._files.get(("build-id", build_id))
        if file is None:
            return None
        index = bisect_right(file.functions, address) - 1
        if index >= 0 and address < file.function_ends[index]:
            return file.functions[index]
        return None

    def stats(self) -> dict[str, int]:
        """Files and rows held against capacity, and the counters."""
        return {
            "files": len(self._files),
            "rows": sum(f.rows for f in self._files.values()),
            "capacity_rows": self._capacity,
            "processes": len(self._processes),
            **self.counters,
        }

    def debug_info(self) -> dict[str, Any]:
        return {
            "files": [
                {"path": f.path, "rows": f.rows, "processes": len(f.users), "build_s": f.build_s}
                for f in self._files.values()
            ],
            "failed": [{"file": str(key), "error": error} for key, error in self._failed.items()],
        }

    # --- mappings ---

    def _map(self, pid: int, process: _Process, entry: MapEntry) -> None:
        placed = self._placed_file(pid, entry) if entry.is_file else None
        key, file, bias = placed if placed else (None, None, 0)
        start, rows = (file.start, file.rows) if file else (0, 0)
        self._session.set_unwind_mapping(pid, entry.start, entry.end, bias, start, rows)
        process.mappings[(entry.start, entry.end)] = key
        if file is not None:
            file.users.add(pid)

    def _unmap(self, pid: int, process: _Process, span: tuple[int, int]) -> None:
        key = process.mappings.pop(span)
        self._session.delete_unwind_mapping(pid, *span)
        file = self._files.get(key) if key else None
        if file is not None:
            file.users.discard(pid)

    def _placed(self, pid: int, entry: MapEntry) -> bool:
        """Whether the file of ``entry`` needs no table built: one is in the kernel,
        or none can be had."""
        try:
            build_id, segments = self._layout(pid, entry)
        except (EmberscopeError, OSError):
            return True
        key = _file_key(entry, build_id)
        return key in self._files or key in self._failed or _bias(entry, segments) is None

    def _layout(self, pid: int, entry: MapEntry) -> tuple[str, tuple[LoadSegment, ...]]:
        """A file's build ID and segments, read once per inode: a node starting
        processes all day maps the same few libraries into each of them."""
        inode = (entry.dev_major, entry.dev_minor, entry.inode)
        layout = self._layouts.get(inode)
        if layout is None:
            with open_mapped_file(pid, entry) as stream:
                layout = read_layout(stream, entry.path)
            self._layouts.put(inode, layout)
        return layout

    def _placed_file(self, pid: int, entry: MapEntry) -> tuple[_FileKey, _File, int] | None:
        """The file's table in the kernel and the mapping's bias; None: no table."""
        try:
            build_id, segments = self._layout(pid, entry)
            bias = _bias(entry, segments)
            key = _file_key(entry, build_id)
            if key in self._files:
                self._files.move_to_end(key)
                return key, self._files[key], bias
            if key in self._failed or bias is None:
                return None
            with open_mapped_file(pid, entry) as stream:
                file = self._load(key, build_id, stream, entry.path)
        except (EmberscopeError, OSError) as exc:
            self.counters["files_failed"] += 1
            log.debug("no unwind table for %s of pid %d: %s", entry.path, pid, exc)
            return None
        return (key, file, bias) if file else None

    # --- tables ---

    def _load(self, key: _FileKey, build_id: str, stream: Any, path: str) -> _File | None:
        started = time.perf_counter()
        try:
            table = self._table(build_id, stream, path)
        except EmberscopeError as exc:
            self._failed[key] = str(exc)
            self.counters["files_failed"] += 1
            return None
        elapsed = time.perf_counter() - started
        self.counters["build_ms"] += round(elapsed * 1000)
        if table.row_count == 0 or table.row_count > _MAX_FILE_ROWS:
            self._failed[key] = f"{table.row_count} rows"
            return None
        start = self._allocate(table.row_count)
        if start is None:
            self.counters["files_without_room"] += 1
            return None
        self._session.write_unwind_rows(start, table.rows)
        file = self._files[key] = _File(
            path, start, table.row_count, round(elapsed, 4), table.functions, table.function_ends
        )
        self.counters["files_built"] += 1
        return file

    def _table(self, build_id: str, stream: Any, path: str) -> UnwindTable:
        if self._cache is not None and build_id:
            return self._cache.load_or_build(build_id, stream, path)
        stream.seek(0)
        return build_table(stream, path)

    def _allocate(self, rows: int) -> int | None:
        """The start of a free span of ``rows`` rows, evicting unused files for room."""
        while True:
            start = self._first_fit(rows)
            if start is not None:
                return start
            unused = next((k for k, f in self._files.items() if not f.users), None)
            if unused is None:
                return None
            del self._files[unused]
            self.counters["files_evicted"] += 1

    def _first_fit(self, rows: int) -> int | None:
        taken = sorted((f.start, f.start + f.rows) for f in self._files.values())
        position = 0
        for start, end in taken:
            if start - position >= rows:
                return position
            position = max(position, end)
        return position if self._capacity - position >= rows else None


def _file_key(entry: MapEntry, build_id: str) -> _FileKey:
    """A file's table goes by its build ID, else by device and inode."""
    if build_id:
        return ("build-id", build_id)
    return ("inode", entry.dev_major, entry.dev_minor, entry.inode)


def _bias(entry: MapEntry, segments: tuple[LoadSegment, ...]) -> int | None:
    """What to subtract from a runtime address of the mapping to get a file address."""
    for segment in segments:
        if segment.offset <= entry.offset < segment.offset + max(segment.filesz, 1):
            return entry.start - entry.offset + segment.offset - segment.vaddr
    return None


def open_table_cache(directory: str) -> TableCache | None:
    """The disk cache of tables in ``directory`` (made if missing); None when
    ``directory`` is "" or cannot be made: tables are then built at each start."""
    if not directory:
        return None
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        log.warning("no unwind table cache in %s: %s", directory, exc.strerror)
        return None
    return TableCache(directory)
