"""Turn sampled addresses into frames: user space through maps and ELF, kernel through kallsyms."""

from __future__ import annotations

import logging
import os
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import BinaryIO

from agent.errors import ProcessError, SymbolError
from agent.symbols.elf import ElfInfo, read_build_id, read_elf
from agent.symbols.frames import Frame, MappedFile
from agent.symbols.kallsyms import KernelSymbols, read_kallsyms
from agent.symbols.procmaps import MapEntry, read_maps

__all__ = ["Symbolizer"]

log = logging.getLogger(__name__)

_FileKey = tuple[int, int, int]  # dev major, dev minor, inode


@dataclass
class _Process:
    """What is kept of one process: its code mappings and the files not yet parsed."""

    mappings: list[MapEntry]
    starts: list[int]
    streams: dict[_FileKey, BinaryIO] = field(default_factory=dict)

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

    >>> with Symbolizer() as symbolizer:
    ...     symbolizer.add_process(pid)
    ...     frames = symbolizer.resolve_user(pid, [leaf, caller, ...])
    ...     symbolizer.forget(pid)

    ``tables_parsed`` counts ELF files read in full and ``errors`` counts
    fallbacks by reason (``process_unreadable``, ``file_unopened``, ``file_corrupt``,
    ``kallsyms_unreadable``).
    """

    def __init__(self, proc_root: str = "/proc", kallsyms_path: str = "/proc/kallsyms") -> None:
        self._proc_root = proc_root
        self._kallsyms_path = kallsyms_path
        self._kernel: KernelSymbols | None = None
        self._kernel_failed = False
        self._processes: dict[int, _Process] = {}
        # A file is known by (dev, inode); the same build id reached through
        # another inode (one library in many container images) shares a table.
        # None marks a file that failed, so it is not tried again.
        self._files: dict[_FileKey, ElfInfo | None] = {}
        self._by_build_id: dict[str, ElfInfo] = {}
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

    def add_process(self, pid: int) -> None:
        """Read the maps of ``pid`` and open its code files; ProcessError if it is gone."""
        process = self._processes.get(pid)
        if process is None:
            process = _Process([], [])
        self._refresh(pid, process)
        self._processes[pid] = process

    def forget(self, pid: int) -> None:
        """Drop what is kept of ``pid`` and close its files."""
        process = self._processes.pop(pid, None)
        if process is not None:
            process.close()

    def close(self) -> None:
        for pid in list(self._processes):
            self.forget(pid)

    def resolve_user(self, pid: int, addresses: Sequence[int]) -> list[Frame]:
        """Frames for a user stack, leaf first; never raises for a bad file or a gone process."""
        refreshed = pid not in self._processes
        process = self._process(pid)
        if process is None:
            return [_unknown(address) for address in addresses]
        frames = []
        for depth, address in enumerate(addresses):
            lookup = address - 1 if depth else address
            entry = process.find(lookup)
            if entry is None and not refreshed:
                # Not mapped when last read: maybe a library dlopen()ed since.
                refreshed = True
                if self._try_refresh(pid, process):
                    entry = process.find(lookup)
            frames.append(self._user_frame(process, entry, address, lookup))
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
        if pid not in self._processes:
            try:
                self.add_process(pid)
            except (ProcessError, SymbolError) as exc:
                log.debug("cannot symbolize pid %d: %s", pid, exc)
                self._count("process_unreadable")
                return None
        return self._processes[pid]

    def _try_refresh(self, pid: int, process: _Process) -> bool:
        try:
            self._refresh(pid, process)
        except (ProcessError, SymbolError):
            return False
        return True

    def _refresh(self, pid: int, process: _Process) -> None:
        """Re-read the maps of ``pid`` and open each code file not parsed nor open yet."""
        mappings = sorted(
            (m for m in read_maps(pid, self._proc_root) if m.is_exec), key=lambda m: m.start
        )
        process.mappings = mappings
        process.starts = [m.start for m in mappings]
        for entry in mappings:
            key = _file_key(entry)
            if entry.is_file and key not in self._files and key not in process.streams:
                stream = self._open(pid, entry)
                if stream is not None:
                    process.streams[key] = stream

    def _open(self, pid: int, entry: MapEntry) -> BinaryIO | None:
        base = f"{self._proc_root}/{pid}"
        for path in (
            f"{base}/map_files/{entry.start:x}-{entry.end:x}",
            f"{base}/root/{entry.path.lstrip('/')}",
        ):
            try:
                return open(path, "rb")
            except OSError as exc:
                log.debug("cannot open %s for %s: %s", path, entry.path, exc)
        return None

    def _user_frame(
        self, process: _Process, entry: MapEntry | None, address: int, lookup: int
    ) -> Frame:
        if entry is None:
            return _unknown(address)
        info = self._elf_info(process, entry) if entry.is_file else None
        offset = lookup - entry.start + entry.offset
        name = None
        if info is not None:
            vaddr = info.file_offset_to_vaddr(offset)
            name = info.symbols.lookup(vaddr) if vaddr is not None else None
        if name is None:
            # The offset of the address reported, so it matches Frame.address.
            module = os.path.basename(entry.path) or "[anon]"
            name = f"{module}+0x{address - entry.start + entry.offset:x}"
        mapping = MappedFile(
            start=entry.start,
            limit=entry.end,
            offset=entry.offset,
            path=entry.path,
            build_id=info.build_id if info else "",
        )
        return Frame(name=name, address=address, mapping=mapping)

    def _elf_info(self, process: _Process, entry: MapEntry) -> ElfInfo | None:
        key = _file_key(entry)
        stream = process.streams.pop(key, None)
        try:
            if key not in self._files:
                self._files[key] = self._load(entry, stream)
        finally:
            if stream is not None:
                stream.close()
        return self._files[key]

    def _load(self, entry: MapEntry, stream: BinaryIO | None) -> ElfInfo | None:
        if stream is None:
            self._failed(entry.path, "file_unopened", "cannot be opened")
            return None
        try:
            known = self._by_build_id.get(read_build_id(stream, entry.path))
            if known is not None:
                return known
            info = read_elf(stream, entry.path)
        except (SymbolError, OSError) as exc:
            self._failed(entry.path, "file_corrupt", str(exc))
            return None
        self.tables_parsed += 1
        if info.build_id:
            self._by_build_id[info.build_id] = info
        return info

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


def _file_key(entry: MapEntry) -> _FileKey:
    return (entry.dev_major, entry.dev_minor, entry.inode)


def _unknown(address: int) -> Frame:
    """A frame for an address outside every mapping known for its process."""
    return Frame(name=f"[unknown]+0x{address:x}", address=address)
