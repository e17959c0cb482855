"""Turn sampled addresses into frames: user space through maps and ELF, kernel through kallsyms."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, BinaryIO

from agent.errors import ProcessError, SymbolError
from agent.symbols.cache import LruCache
from agent.symbols.debuginfo import read_debug_symbols
from agent.symbols.demangle import Demangler
from agent.symbols.elf import ElfInfo, read_build_id, read_elf
from agent.symbols.frames import Frame, MappedFile
from agent.symbols.gopclntab import read_gopclntab
from agent.symbols.kallsyms import KernelSymbols, read_kallsyms
from agent.symbols.minidebuginfo import read_minidebuginfo
from agent.symbols.perfmap import DEFAULT_MAX_BYTES, PerfMap
from agent.symbols.procmaps import MapEntry, open_mapped_file, read_maps
from agent.symbols.vdso import VDSO_PATH, read_own_vdso

__all__ = ["Symbolizer"]

log = logging.getLogger(__name__)

_FileKey = tuple[int, int, int]  # dev major, dev minor, inode
_REFRESH_EVERY_S = 1.0
# A JIT appends to its perf map all the time: look at it at most this often.
_PERF_MAP_EVERY_S = 1.0
_BUILD_IDS_KEPT = 1024
# Exited processes pushed out of the pid cache, kept until the collection that names
# their last samples forgets them; a bound in case an exit is never heard of.
_EXITED_KEPT = 4096
# Resolved frames kept per process (about 200 bytes each), emptied when full.
_FRAMES_PER_PROCESS = 8192


@dataclass
class _Process:
    """What is kept of one process: its code mappings, files not yet parsed and tables.

    ``tables`` holds None for a file that could not be read, so it is not tried again.
    ``perf_map_checked_at`` is when the perf map was last looked at.
    """

    mappings: list[MapEntry]
    starts: list[int]
    streams: dict[_FileKey, BinaryIO] = field(default_factory=dict)
    tables: dict[_FileKey, ElfInfo | None] = field(default_factory=dict)
    perf_map: PerfMap | None = None
    perf_map_checked_at: float = float("-inf")
    refreshed_at: float = 0.0  # when an unmapped address last made us re-read its maps
    # (address, is a return address) -> its frame, for addresses in files: the same
    # few thousand addresses recur in every stack; forgotten when the maps are read
    frames: dict[tuple[int, bool], Frame] = field(default_factory=dict)

    def find(self, address: int) -> MapEntry | None:
        index = bisect_right(self.starts, address) - 1
        if index >= 0 and address < self.mappings[index].end:
            return self.mappings[index]
        return None

    def close(self) -> None:
        for stream in self.streams.values():
            stream.close()
        self.streams.clear()


class Symbolizer:
    """Resolves user and kernel stacks; owns the open files and parsed tables.

    Every frame but the leaf holds a return address: the instruction after a
    call, which belongs to the next function when the call is the last
    instruction of its caller (a ``noreturn`` callee). So those are looked up
    at ``address - 1``, the call itself, and reported as sampled.

    Files are opened through ``/proc/<pid>/map_files/<start>-<end>``, which
    reaches the very file mapped even when it was deleted or replaced (an
    upgraded package) or lives in another mount namespace, else through
    ``/proc/<pid>/root/<path>``; never by the host path alone. They are opened
    when a process is added, so a process that exits afterwards still resolves.

    Three LRUs of exactly the sizes given hold what is kept:
    ``pid_cache_size`` processes (evicting one closes its files; one that exited
    is kept aside, its files parsed, until ``forget``),
    ``build_id_cache_size`` symbol tables by build id, shared by every copy of
    a file, and ``same_file_cache_size`` tables of files without a build id,
    by device and inode. A binary without ``.symtab`` is completed from its
    separate debug file; anonymous code is named by the process's perf map, if
    it is a regular file of at most ``perf_map_max_bytes``, and the vDSO by our
    own (agent.symbols.vdso); ELF names are demangled in the ``demangle`` mode
    (see agent.symbols.demangle).

    >>> with Symbolizer() as symbolizer:
    ...     symbolizer.add_process(pid)
    ...     frames = symbolizer.resolve_user(pid, [leaf, caller, ...])
    ...     symbolizer.forget(pid)

    ``tables_parsed`` counts ELF files read in full and ``errors`` counts
    fallbacks by reason (``process_unreadable``, ``file_unopened``, ``file_corrupt``,
    ``kallsyms_unreadable``, ``perf_map_refused``, ``perf_map_too_large``).
    """

    def __init__(
        self,
        proc_root: str = "/proc",
        kallsyms_path: str = "/proc/kallsyms",
        pid_cache_size: int = 32,
        build_id_cache_size: int = 64,
        same_file_cache_size: int = 8,
        demangle: str = "none",
        perf_map_max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self._proc_root = proc_root
        self._perf_map_max_bytes = perf_map_max_bytes
        self._kallsyms_path = kallsyms_path
        self._kernel: KernelSymbols | None = None
        self._kernel_failed = False
        self._processes: LruCache[int, _Process] = LruCache(pid_cache_size, self._evicted)
        self._exited: LruCache[int, _Process] = LruCache(
            _EXITED_KEPT, on_evict=lambda _pid, process: process.close()
        )
        # The same build id reached through another inode (one library in many
        # container images) shares a table; files without one go by (dev, inode).
        self._by_build_id: LruCache[str, ElfInfo] = LruCache(build_id_cache_size)
        self._by_file: LruCache[_FileKey, ElfInfo] = LruCache(same_file_cache_size)
        # (dev, inode) -> build id ("" for none): a new process maps the same files again
        self._build_ids: LruCache[_FileKey, str] = LruCache(_BUILD_IDS_KEPT)
        self._demangler = Demangler(demangle)
        self._function_start: Callable[[str, int], int | None] | None = None
        self._vdso: tuple[int, ElfInfo | None] | None = None  # read at its first frame
        self.tables_parsed = 0
        self.errors: dict[str, int] = {}

    def __enter__(self) -> Symbolizer:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def add_process(self, pid: int) -> list[MapEntry]:
        """Read the maps of ``pid`` and open its code files; return its executable
        mappings, lowest first (the unwinder takes them: the maps are read once).
        ProcessError if it is gone."""
        process = self._processes.get(pid)
        if process is None:
            process = self._add(pid)
        else:
            self._refresh(pid, process)
        return process.mappings

    def _evicted(self, pid: int, process: _Process) -> None:
        """A process pushed out of the pid cache. Still running, it is closed: its maps
        can be read again. Gone, its names cannot, so it is kept (its files parsed now,
        its resolved frames dropped) until ``forget``, which the collection that names
        its last samples calls: a busy node starts more processes in one interval than
        the cache holds."""
        if os.path.exists(f"{self._proc_root}/{pid}/exe"):
            process.close()
            return
        for entry in process.mappings:
            if entry.is_file and _file_key(entry) in process.streams:
                self._elf_info(pid, process, entry)
        process.frames.clear()
        self._exited.put(pid, process)

    def _add(self, pid: int) -> _Process:
        # The maps are read before any file is opened: a failure leaks nothing.
        process = _Process([], [])
        self._refresh(pid, process)
        self.forget(pid)  # an exited process whose pid is used again
        self._processes.put(pid, process)
        return process

    def forget(self, pid: int) -> None:
        """Drop what is kept of ``pid`` and close its files."""
        for kept in (self._processes, self._exited):
            process = kept.pop(pid)
            if process is not None:
                process.close()

    def close(self) -> None:
        for kept in (self._processes, self._exited):
            for pid, _ in kept.items():
                self.forget(pid)

    def debug_info(self) -> dict[str, Any]:
        """The caches' sizes, counters and entries, least recently used first."""
        return {
            "pid_cache": {
                **self._processes.stats(),
                "entries": [_process_info(pid, p) for pid, p in self._processes.items()],
                "exited_kept": len(self._exited),
            },
            "build_id_cache": {
                **self._by_build_id.stats(),
                "entries": [
                    {"build_id": key, **_table_info(info)}
                    for key, info in self._by_build_id.items()
                ],
            },
            "same_file_cache": {
                **self._by_file.stats(),
                "entries": [
                    {"dev": f"{key[0]:02x}:{key[1]:02x}", "inode": key[2], **_table_info(info)}
                    for key, info in self._by_file.items()
                ],
            },
        }

    def resolve_user(self, pid: int, addresses: Sequence[int]) -> list[Frame]:
        """Frames for a user stack, leaf first; never raises for a bad file or a gone process."""
        refreshed = pid not in self._processes
        process = self._process(pid)
        if process is None:
            return [_unknown(address) for address in addresses]
        frames = []
        for depth, address in enumerate(addresses):
            frame = process.frames.get((address, depth > 0))
            if frame is not None:
                frames.append(frame)
                continue
            lookup = address - 1 if depth else address
            entry = process.find(lookup)
            if entry is None and not refreshed and _may_refresh(process):
                # Not mapped when last read: maybe a library dlopen()ed since.
                # At most once a second: a stack walked without frame pointers
                # is full of addresses that no library will ever cover.
                refreshed = True
                process.refreshed_at = time.monotonic()
                if self._try_refresh(pid, process):
                    entry = process.find(lookup)
            frame = self._user_frame(pid, process, entry, address, lookup)
            if entry is not None and entry.is_file:
                if len(process.frames) >= _FRAMES_PER_PROCESS:
                    process.frames.clear()
                process.frames[(address, depth > 0)] = frame
            frames.append(frame)
        return frames

    def resolve_kernel(self, addresses: Sequence[int]) -> list[Frame]:
        """Frames for a kernel stack, leaf first; kallsyms is read on first use."""
        kernel = self._kernel_symbols()
        frames = []
        for depth, address in enumerate(addresses):
            found = kernel.lookup(address - 1 if depth else address) if kernel else None
            name = found[0] if found else f"[kernel.kallsyms]+0x{address:x}"
            frames.append(Frame(name=name, address=address))
        return frames

    def _process(self, pid: int) -> _Process | None:
        process = self._processes.get(pid) or self._exited.get(pid)
        if process is None:
            try:
                process = self._add(pid)
            except (ProcessError, SymbolError) as exc:
                log.debug("cannot symbolize pid %d: %s", pid, exc)
                self._count("process_unreadable")
        return process

    def _try_refresh(self, pid: int, process: _Process) -> bool:
        try:
            self._refresh(pid, process)
        except (ProcessError, SymbolError):
            return False
        return True

    def _refresh(self, pid: int, process: _Process) -> None:
        """Re-read the maps of ``pid`` and open each code file not parsed nor open yet;
        a file another process mapped and whose table is kept is not opened again."""
        mappings = sorted(
            (m for m in read_maps(pid, self._proc_root) if m.is_exec), key=lambda m: m.start
        )
        process.mappings = mappings
        process.starts = [m.start for m in mappings]
        process.frames.clear()
        for entry in mappings:
            key = _file_key(entry)
            if not entry.is_file or key in process.tables or key in process.streams:
                continue
            known = self._kept_table(key)
            if known is not None:
                process.tables[key] = known
                continue
            stream = self._open(pid, entry)
            if stream is not None:
                process.streams[key] = stream

    def _kept_table(self, key: _FileKey, build_id: str | None = None) -> ElfInfo | None:
        """The table of the file ``key`` (whose ``build_id`` is looked up when not
        given) if it was parsed before and is still kept."""
        if build_id is None:
            build_id = self._build_ids.get(key)
            if build_id is None:
                return None
        return self._by_build_id.get(build_id) if build_id else self._by_file.get(key)

    def _open(self, pid: int, entry: MapEntry) -> BinaryIO | None:
        try:
            return open_mapped_file(pid, entry, self._proc_root)
        except ProcessError as exc:
            log.debug("%s", exc)
            return None

    def _user_frame(
        self, pid: int, process: _Process, entry: MapEntry | None, address: int, lookup: int
    ) -> Frame:
        if entry is None:
            return _unknown(address)
        info = self._elf_info(pid, process, entry) if entry.is_file else self._vdso_table(entry)
        offset = lookup - entry.start + entry.offset
        name = None
        if info is not None:
            vaddr = info.file_offset_to_vaddr(offset)
            name = info.symbols.lookup(vaddr) if vaddr is not None else None
            name = self._demangler.demangle(name) if name is not None else None
        elif not entry.path:
            name = self._jit_name(pid, process, lookup)
        if name is None:
            module = os.path.basename(entry.path) or "[anon]"
            name = f"{module}+0x{self._unnamed_offset(info, entry, address, lookup):x}"
        mapping = MappedFile(
            start=entry.start,
            limit=entry.end,
            offset=entry.offset,
            path=entry.path,
            build_id=info.build_id if info else "",
        )
        return Frame(name=name, address=address, mapping=mapping)

    def _vdso_table(self, entry: MapEntry) -> ElfInfo | None:
        """Our own vDSO's table for a process's ``[vdso]`` of the same size (read once)."""
        if entry.path != VDSO_PATH:
            return None
        if self._vdso is None:
            self._vdso = read_own_vdso() or (0, None)
        size, info = self._vdso
        return info if entry.end - entry.start == size else None

    def set_function_starts(self, function_start: Callable[[str, int], int | None]) -> None:
        """Name code without a symbol by the start of its function, which
        ``function_start(build_id, file address)`` knows (a file's FDEs)."""
        self._function_start = function_start
        for _, process in self._processes.items():
            process.frames.clear()  # named without it

    def _unnamed_offset(
        self, info: ElfInfo | None, entry: MapEntry, address: int, lookup: int
    ) -> int:
        """The file offset that names code without a symbol: its function's start
        where the FDEs tell it (one name per function), else the address's own."""
        offset = address - entry.start + entry.offset
        if info is None or not info.build_id or self._function_start is None:
            return offset
        lookup_offset = lookup - entry.start + entry.offset
        vaddr = info.file_offset_to_vaddr(lookup_offset)
        start = self._function_start(info.build_id, vaddr) if vaddr is not None else None
        if start is None:
            return offset
        return lookup_offset - (vaddr - start)

    def _jit_name(self, pid: int, process: _Process, address: int) -> str | None:
        """The perf map's name for anonymous code; the file is looked at once a second
        at most, and read again only when it changed."""
        perf_map = process.perf_map
        if perf_map is None:
            root = f"{self._proc_root}/{pid}/root"
            perf_map = PerfMap(root, f"/tmp/perf-{pid}.map", self._perf_map_max_bytes)
            process.perf_map = perf_map
        now = time.monotonic()
        if now - process.perf_map_checked_at >= _PERF_MAP_EVERY_S:
            process.perf_map_checked_at = now
            if perf_map.refresh() and perf_map.error:
                self._failed(perf_map.path, perf_map.error_reason, perf_map.error)
        return perf_map.lookup(address)

    def _elf_info(self, pid: int, process: _Process, entry: MapEntry) -> ElfInfo | None:
        key = _file_key(entry)
        if key not in process.tables:
            stream = process.streams.pop(key, None)
            try:
                process.tables[key] = self._load(pid, entry, stream)
            finally:
                if stream is not None:
                    stream.close()
        return process.tables[key]

    def _load(self, pid: int, entry: MapEntry, stream: BinaryIO | None) -> ElfInfo | None:
        if stream is None:
            self._failed(entry.path, "file_unopened", "cannot be opened")
            return None
        key = _file_key(entry)
        try:
            build_id = self._build_ids.get(key)
            if build_id is None:
                build_id = read_build_id(stream, entry.path)
                self._build_ids.put(key, build_id)
            known = self._kept_table(key, build_id)
            if known is not None:
                return known
            info = read_elf(stream, entry.path)
        except (SymbolError, OSError) as exc:
            self._failed(entry.path, "file_corrupt", str(exc))
            return None
        roots = (f"{self._proc_root}/{pid}/root", "/")
        info = read_debug_symbols(info, entry.path, roots)
        if not info.has_symtab and not info.debug_file:
            info = self._with_mini_symbols(info, stream, entry.path)
        if not info.has_symtab and not info.debug_file:
            info = self._with_go_symbols(info, stream, entry.path)
        self.tables_parsed += 1
        if info.build_id:
            self._by_build_id.put(info.build_id, info)
        else:
            self._by_file.put(key, info)
        return info

    def _with_mini_symbols(self, info: ElfInfo, stream: BinaryIO, path: str) -> ElfInfo:
        """Fedora and RHEL keep local function names xz-compressed in .gnu_debugdata."""
        try:
            return read_minidebuginfo(info, stream, path)
        except SymbolError as exc:
            self._failed(path, "minidebuginfo_corrupt", str(exc))
            return info

    def _with_go_symbols(self, info: ElfInfo, stream: BinaryIO, path: str) -> ElfInfo:
        """A stripped Go binary still names its functions in .gopclntab."""
        try:
            go_symbols = read_gopclntab(stream, path)
        except SymbolError as exc:
            self._failed(path, "gopclntab_corrupt", str(exc))
            return info
        if go_symbols is None:
            return info
        return dataclasses.replace(info, symbols=go_symbols)

    def _failed(self, path: str, reason: str, detail: str) -> None:
        log.warning("no symbols for %s, frames will show offsets: %s", path, detail)
        self._count(reason)

    def _kernel_symbols(self) -> KernelSymbols | None:
        if self._kernel is None and not self._kernel_failed:
            try:
                with open(self._kallsyms_path, encoding="utf-8") as stream:
                    self._kernel = read_kallsyms(stream, self._kallsyms_path)
            except (SymbolError, OSError) as exc:
                self._kernel_failed = True
                log.warning("no kernel symbols, frames will show addresses: %s", exc)
                self._count("kallsyms_unreadable")
        return self._kernel

    def _count(self, reason: str) -> None:
        self.errors[reason] = self.errors.get(reason, 0) + 1


def _may_refresh(process: _Process) -> bool:
    return time.monotonic() - process.refreshed_at >= _REFRESH_EVERY_S


def _file_key(entry: MapEntry) -> _FileKey:
    return (entry.dev_major, entry.dev_minor, entry.inode)


def _unknown(address: int) -> Frame:
    """A frame for an address outside every mapping known for its process."""
    return Frame(name=f"[unknown]+0x{address:x}", address=address)


def _table_info(info: ElfInfo | None) -> dict[str, Any]:
    if info is None:
        return {"path": "", "symbols": None, "debug_file": ""}
    return {"path": info.path, "symbols": len(info.symbols), "debug_file": info.debug_file}


def _process_info(pid: int, process: _Process) -> dict[str, Any]:
    """One pid's entry: each mapped file with its symbol count (None until parsed or if failed)."""
    files = {}
    for entry in process.mappings:
        key = _file_key(entry)
        if entry.is_file and key not in files:
            info = process.tables.get(key)
            files[key] = {
                "path": entry.path,
                "dev": f"{key[0]:02x}:{key[1]:02x}",
                "inode": key[2],
                "build_id": info.build_id if info else "",
                "symbols": len(info.symbols) if info else None,
                "debug_file": info.debug_file if info else "",
            }
    perf_map = process.perf_map
    return {
        "pid": pid,
        "files": list(files.values()),
        "perf_map": None
        if perf_map is None
        else {
            "path": perf_map.path,
            "symbols": len(perf_map),
            "malformed": perf_map.malformed,
            "error": perf_map.error,
        },
    }
