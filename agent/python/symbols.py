"""Naming the Python frames the kernel recorded: qualified name, file and line.

The kernel copies each code object's names into ``py_symbols`` once, and
sends its line table the first time it sees it (:meth:`PythonSymbolizer.keep`),
so a process that has exited still gets names and lines. When the kernel's
copy is gone (evicted from the LRU map) or cut short, they are read through
``/proc/<pid>/mem``; a frame whose line cannot be had at all gets its
function's first line, and is counted. Before 3.11 code objects have no
qualified name: it comes from the source file (:mod:`agent.python.qualnames`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from agent.ebpf import PythonFrameRecord, PythonLineTable, PythonStack
from agent.ebpf.layout import PySymbol
from agent.errors import ProcessError, PythonError
from agent.python.linetable import LineTable
from agent.python.objects import ProcessMemory, decode_str
from agent.python.offsets import PythonOffsets
from agent.python.qualnames import SourceQualnames
from agent.symbols import Frame
from agent.symbols.cache import LruCache

__all__ = ["TRUNCATED_FRAME", "UNKNOWN_FUNCTION", "PythonFrame", "PythonSymbolizer"]

log = logging.getLogger(__name__)

UNKNOWN_FUNCTION = "<unknown python function>"
# Where a stack deeper than the kernel walks was cut (toward the root).
TRUNCATED_FRAME = Frame("[truncated python stack]")
_ELLIPSIS = "…"

# (pid, code object address, first line)
_CodeKey = tuple[int, int, int]
ReadSymbol = Callable[[int, int, int], PySymbol | None]


@dataclass(frozen=True, slots=True)
class PythonFrame:
    frame: Frame
    entry: bool
    """The last frame of one run of the C eval loop (toward the root)."""


@dataclass(slots=True)
class _Code:
    name: str
    filename: str
    lines: LineTable | None
    frames: dict[int, Frame] = field(default_factory=dict)  # by instruction offset


class PythonSymbolizer:
    """Turns recorded Python stacks into frames, caching per code object."""

    def __init__(self, read_symbol: ReadSymbol, cache_size: int, proc_root: str = "/proc") -> None:
        self._read_symbol = read_symbol
        self._proc_root = proc_root
        self._processes: dict[int, PythonOffsets] = {}
        self._codes: LruCache[_CodeKey, _Code] = LruCache(cache_size)
        self._tables: LruCache[_CodeKey, PythonLineTable] = LruCache(cache_size)
        self._qualnames = SourceQualnames(proc_root=proc_root)
        self.unnamed_frames = 0
        self.lines_unknown = 0

    def add_process(self, pid: int, offsets: PythonOffsets) -> None:
        self._processes[pid] = offsets

    def forget(self, pid: int) -> None:
        self._processes.pop(pid, None)

    def stats(self) -> dict[str, int]:
        return {**self._codes.stats(), "unnamed_frames": self.unnamed_frames}

    def keep(self, tables: Iterable[PythonLineTable]) -> None:
        """Keep the line tables the kernel sent, for the code objects' first naming."""
        for table in tables:
            self._tables.put((table.pid, table.code, table.first_line), table)

    def resolve(self, pid: int, stack: PythonStack) -> list[PythonFrame]:
        """The stack's frames leaf first; a truncated stack ends in TRUNCATED_FRAME."""
        offsets = self._processes.get(pid)
        memory = _LazyMemory(pid, self._proc_root)
        try:
            frames = [
                PythonFrame(self._frame(pid, offsets, memory, record), record.entry)
                for record in stack.frames
            ]
        finally:
            memory.close()
        if stack.truncated:
            frames.append(PythonFrame(TRUNCATED_FRAME, True))
        return frames

    def _frame(
        self,
        pid: int,
        offsets: PythonOffsets | None,
        memory: _LazyMemory,
        record: PythonFrameRecord,
    ) -> Frame:
        key = (pid, record.code, record.first_line)
        code = self._codes.get(key)
        if code is None:
            code = self._load(key, offsets, memory)
            self._codes.put(key, code)
        if code.name == UNKNOWN_FUNCTION:
            self.unnamed_frames += 1
        frame = code.frames.get(record.lasti)
        if frame is None:
            line = self._line(code.lines, offsets, record)
            frame = code.frames[record.lasti] = Frame(code.name, filename=code.filename, line=line)
        return frame

    def _line(
        self, lines: LineTable | None, offsets: PythonOffsets | None, record: PythonFrameRecord
    ) -> int:
        """The frame's line; its function's first line when its table could
        not be had (or was cut before it)."""
        if lines is not None and offsets is not None:
            byte_offset = _byte_offset(offsets, record.lasti)
            if lines.covers(byte_offset):
                return lines.line(byte_offset)
        self.lines_unknown += 1
        return record.first_line

    def _load(self, key: _CodeKey, offsets: PythonOffsets | None, memory: _LazyMemory) -> _Code:
        pid, address, first_line = key
        name = filename = ""
        symbol = self._read_symbol(pid, first_line, address)
        if symbol is not None:
            name, filename = _symbol_names(symbol)
        lines = None
        if offsets is not None:
            if symbol is None or symbol.name_truncated or symbol.file_truncated:
                try:
                    name, filename = _read_names(memory.get(), offsets, address)
                except (ProcessError, PythonError) as exc:
                    log.debug("pid %d: code object %#x: %s", pid, address, exc)
            lines = self._read_lines(key, offsets, memory)
            if name and offsets.version < (3, 11):
                name = self._qualnames.qualname(pid, filename, first_line, name)
        return _Code(name or UNKNOWN_FUNCTION, filename, lines)

    def _read_lines(
        self, key: _CodeKey, offsets: PythonOffsets, memory: _LazyMemory
    ) -> LineTable | None:
        """The table the kernel sent whole, else the process's own, else the
        start of the table the kernel cut."""
        pid, address, first_line = key
        sent = self._tables.get(key)
        try:
            if sent is not None and not sent.cut:
                return LineTable(offsets.version, sent.table, first_line)
            process = memory.get()
            table = process.read_bytes_object(
                process.read_pointer(address + offsets.code_linetable)
            )
            return LineTable(offsets.version, table, first_line)
        except (ProcessError, PythonError) as exc:
            log.debug("pid %d: line table of code object %#x: %s", pid, address, exc)
        if sent is None:
            return None
        try:
            return LineTable(offsets.version, sent.table, first_line, cut=True)
        except PythonError:
            return None


class _LazyMemory:
    """Opens the process's memory only if a code object has to be read."""

    def __init__(self, pid: int, proc_root: str) -> None:
        self._pid = pid
        self._proc_root = proc_root
        self._memory: ProcessMemory | None = None

    def get(self) -> ProcessMemory:
        if self._memory is None:
            self._memory = ProcessMemory(self._pid, self._proc_root)
        return self._memory

    def close(self) -> None:
        if self._memory is not None:
            self._memory.close()


def _byte_offset(offsets: PythonOffsets, lasti: int) -> int:
    """Bytes into the bytecode: 3.11+ records bytes already, older versions f_lasti."""
    return lasti if offsets.instr_is_pointer else lasti * offsets.lasti_unit


def _symbol_names(symbol: PySymbol) -> tuple[str, str]:
    # Slice the raw struct: a c_char array attribute stops at the first NUL,
    # and UCS-2/UCS-4 text is full of them.
    raw = bytes(symbol)
    name_at, file_at = PySymbol.name.offset, PySymbol.file.offset
    name = decode_str(raw[name_at : name_at + symbol.name_len], symbol.name_kind or 1)
    filename = decode_str(raw[file_at : file_at + symbol.file_len], symbol.file_kind or 1)
    if symbol.name_truncated:
        name += _ELLIPSIS
    if symbol.file_truncated:
        filename = _ELLIPSIS + filename
    return name, filename


def _read_names(memory: ProcessMemory, offsets: PythonOffsets, code: int) -> tuple[str, str]:
    ascii_data, compact_data = offsets.unicode_ascii_data, offsets.unicode_compact_data
    name = memory.read_str(memory.read_pointer(code + offsets.code_name), ascii_data, compact_data)
    filename = memory.read_str(
        memory.read_pointer(code + offsets.code_filename), ascii_data, compact_data
    )
    return name, filename
