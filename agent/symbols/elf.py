"""ELF files: build id, PT_LOAD segments and a bulk-read symbol table.

The only module that imports pyelftools; its errors become SymbolError here.
"""

from __future__ import annotations

import os
import struct
from array import array
from bisect import bisect_right
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, BinaryIO

from elftools.common.exceptions import ELFError
from elftools.construct.core import ConstructError
from elftools.elf.elffile import ELFFile

from agent.errors import SymbolError

__all__ = [
    "MAX_TABLE_BYTES",
    "ElfInfo",
    "LoadSegment",
    "SymbolTable",
    "open_elf",
    "read_build_id",
    "read_elf",
    "translated_errors",
]

_SHN_UNDEF = 0
_SHN_LORESERVE = 0xFF00
_SHF_EXECINSTR = 0x4

# Symbol kinds that can name code, best first; STT_NOTYPE only counts in an
# executable section (assembly labels such as _start in some libcs).
_TYPE_RANK = {2: 0, 10: 1, 0: 2}  # STT_FUNC, STT_GNU_IFUNC, STT_NOTYPE
# Among same-address aliases the exported name is the one users know.
_BIND_RANK = {1: 0, 2: 1, 10: 1, 0: 2}  # STB_GLOBAL, STB_WEAK, STB_GNU_UNIQUE, STB_LOCAL

# Elf{32,64}_Sym layouts and where (st_name, st_value, st_size, st_info,
# st_shndx) sit in each: the 64-bit record moves value and size to the end.
_SYM_LAYOUTS = {
    64: ("IBBHQQ", itemgetter(0, 4, 5, 1, 3)),
    32: ("IIIBBH", itemgetter(0, 1, 2, 3, 5)),
}

# The most read of one symbol table or of its strings: a mapped file may be
# sparse, so its size bounds nothing.
MAX_TABLE_BYTES = 128 << 20

# What pyelftools raises on corrupt input, found by fuzzing: its own error,
# the bundled construct's (a string without terminator) and seeks to huge offsets.
_PARSE_ERRORS = (ELFError, ConstructError, OverflowError)


class SymbolTable:
    """Code symbols of one file, sorted by address, searched with bisect.

    A symbol covers ``[value, value + size)``; one of size 0 covers up to the
    next symbol or the end of its section. Names are decoded from the string
    table bytes on first lookup.

    >>> symbols = read_elf(open("/usr/bin/true", "rb")).symbols
    >>> symbols.lookup(vaddr)   # a name, or None when no symbol covers vaddr
    """

    __slots__ = (
        "_starts",
        "_ends",
        "_reach_owners",
        "_name_offsets",
        "_strings",
        "_names",
    )

    def __init__(
        self, starts: array[int], ends: array[int], name_offsets: array[int], strings: bytes
    ) -> None:
        self._starts = starts
        self._ends = ends
        self._name_offsets = name_offsets
        self._strings = strings
        self._names: dict[int, str] = {}
        # For symbols nested in a bigger one: the symbol reaching furthest
        # among those starting at or before each index covers a gap after it.
        self._reach_owners = array("i")
        best_end, best = 0, -1
        for index, end in enumerate(ends):
            if end > best_end:
                best_end, best = end, index
            self._reach_owners.append(best)

    def __len__(self) -> int:
        return len(self._starts)

    def lookup(self, vaddr: int) -> str | None:
        """The name of the symbol covering ELF virtual address ``vaddr``."""
        index = bisect_right(self._starts, vaddr) - 1
        if index < 0:
            return None
        if vaddr < self._ends[index]:
            return self._name(index)
        owner = self._reach_owners[index]
        if owner >= 0 and vaddr < self._ends[owner]:
            return self._name(owner)
        return None

    def merged(self, other: SymbolTable) -> SymbolTable:
        """One table of this one's symbols and ``other``'s; at a shared address, this one's wins."""
        base = len(self._strings)
        rows = sorted(
            [(self._starts[i], 0, self._ends[i], self._name_offsets[i]) for i in range(len(self))]
            + [
                (other._starts[i], 1, other._ends[i], base + other._name_offsets[i])
                for i in range(len(other))
            ]
        )
        kept = [row for i, row in enumerate(rows) if i == 0 or row[0] != rows[i - 1][0]]
        return SymbolTable(
            array("Q", (row[0] for row in kept)),
            array("Q", (row[2] for row in kept)),
            array("Q", (row[3] for row in kept)),
            self._strings + other._strings,
        )

    def _name(self, index: int) -> str:
        name = self._names.get(index)
        if name is None:
            start = self._name_offsets[index]
            end = self._strings.find(b"\0", start)
            raw = self._strings[start:] if end < 0 else self._strings[start:end]
            name = self._names[index] = raw.decode("utf-8", "replace")
        return name


@dataclass(frozen=True, slots=True)
class LoadSegment:
    """One PT_LOAD program header."""

    offset: int
    vaddr: int
    filesz: int
    memsz: int
    flags: int


@dataclass(frozen=True, slots=True)
class ElfInfo:
    """What the symbolizer needs from one ELF file."""

    path: str
    build_id: str
    elf_type: str
    load_segments: tuple[LoadSegment, ...]
    symbols: SymbolTable
    # False when only .dynsym was there: a separate debug file may hold the rest.
    has_symtab: bool = True
    # The .gnu_debuglink file name and the CRC32 that file must have; "" if none.
    debuglink: str = ""
    debuglink_crc: int = 0
    # The separate debug file whose symbols were merged in, if any.
    debug_file: str = ""

    def file_offset_to_vaddr(self, offset: int) -> int | None:
        """Map a file offset to the ELF virtual address of the same byte.

        A runtime address becomes a file offset with ``addr - map.start +
        map.offset``; the PT_LOAD holding that offset then gives the vaddr the
        symbols use. That one rule serves PIE, non-PIE and shared libraries.
        """
        for segment in self.load_segments:
            if segment.offset <= offset < segment.offset + segment.filesz:
                return offset - segment.offset + segment.vaddr
        return None


def read_elf(stream: BinaryIO, path: str = "") -> ElfInfo:
    """Read build id, load segments and symbols (.symtab and .dynsym) from ``stream``.

    ``path`` names the file in errors. A truncated, corrupt or non-ELF file
    raises SymbolError.
    """
    path = path or str(getattr(stream, "name", "<stream>"))
    with translated_errors(path):
        elf, sections = open_elf(stream, path)
        debuglink, crc = _debuglink(elf, sections)
        return ElfInfo(
            path=path,
            build_id=_build_id(elf, sections),
            elf_type=elf["e_type"],
            load_segments=_load_segments(elf),
            symbols=_read_symbols(elf, sections, path),
            has_symtab=any(s["sh_type"] == "SHT_SYMTAB" for s in sections),
            debuglink=debuglink,
            debuglink_crc=crc,
        )


def read_build_id(stream: BinaryIO, path: str = "") -> str:
    """The GNU build id of ``stream`` as hex, or ``""``; cheaper than read_elf."""
    path = path or str(getattr(stream, "name", "<stream>"))
    with translated_errors(path):
        elf, sections = open_elf(stream, path)
        return _build_id(elf, sections)


def read_layout(stream: BinaryIO, path: str = "") -> tuple[str, tuple[LoadSegment, ...]]:
    """The GNU build id (hex, or ``""``) and the PT_LOAD segments of ``stream``."""
    path = path or str(getattr(stream, "name", "<stream>"))
    with translated_errors(path):
        elf, sections = open_elf(stream, path)
        return _build_id(elf, sections), _load_segments(elf)


@contextmanager
def translated_errors(path: str) -> Iterator[None]:
    """Turn pyelftools' exceptions into SymbolError naming the file."""
    try:
        yield
    except _PARSE_ERRORS as exc:
        raise SymbolError(path, f"corrupt or not an ELF file: {exc}") from exc


def open_elf(stream: BinaryIO, path: str) -> tuple[ELFFile, list[Any]]:
    """The ELF file and its sections, every header and section checked to lie
    inside the file; call it within :func:`translated_errors`."""
    size = stream.seek(0, os.SEEK_END)
    stream.seek(0)
    elf = ELFFile(stream)
    header = elf.header
    _check_range(
        path, "program headers", header["e_phoff"], header["e_phnum"] * header["e_phentsize"], size
    )
    _check_range(
        path, "section headers", header["e_shoff"], elf.num_sections() * header["e_shentsize"], size
    )
    sections = list(elf.iter_sections())
    for section in sections:
        if section["sh_type"] != "SHT_NOBITS":
            _check_range(
                path, f"section {section.name!r}", section["sh_offset"], section["sh_size"], size
            )
    return elf, sections


def _check_range(path: str, what: str, offset: int, length: int, file_size: int) -> None:
    if length and offset + length > file_size:
        raise SymbolError(
            path, f"{what} at {offset:#x}+{length:#x} lie past the end of the file ({file_size:#x})"
        )


def _build_id(elf: ELFFile, sections: list[Any]) -> str:
    # Stripped files may lack section headers; the PT_NOTE segment still has it.
    holders = [s for s in sections if s["sh_type"] == "SHT_NOTE"] or [
        s for s in elf.iter_segments() if s["p_type"] == "PT_NOTE"
    ]
    for holder in holders:
        for note in holder.iter_notes():
            if note["n_type"] == "NT_GNU_BUILD_ID":
                return str(note["n_desc"])
    return ""


def _debuglink(elf: ELFFile, sections: list[Any]) -> tuple[str, int]:
    """Name and CRC32 of .gnu_debuglink: a NUL-terminated name, padding to 4, the CRC."""
    section = next((s for s in sections if s.name == ".gnu_debuglink"), None)
    if section is None:
        return "", 0
    data = _raw(elf, section)
    end = data.find(b"\0")
    crc_at = (end + 4) & ~3
    if end <= 0 or crc_at + 4 > len(data):
        return "", 0
    order = "<" if elf.little_endian else ">"
    (crc,) = struct.unpack_from(order + "I", data, crc_at)
    return data[:end].decode("utf-8", "surrogateescape"), crc


def _load_segments(elf: ELFFile) -> tuple[LoadSegment, ...]:
    return tuple(
        LoadSegment(s["p_offset"], s["p_vaddr"], s["p_filesz"], s["p_memsz"], s["p_flags"])
        for s in elf.iter_segments()
        if s["p_type"] == "PT_LOAD"
    )


def _read_symbols(elf: ELFFile, sections: list[Any], path: str) -> SymbolTable:
    """Merge .symtab and .dynsym, decoding each in bulk with struct.iter_unpack."""
    layout, getter = _SYM_LAYOUTS[elf.elfclass]
    layout = ("<" if elf.little_endian else ">") + layout
    # Per section index: the end address if it holds code, else None.
    code_ends = [
        s["sh_addr"] + s["sh_size"] if s["sh_flags"] & _SHF_EXECINSTR else None for s in sections
    ]
    candidates: list[tuple[int, ...]] = []
    strings = b""
    for section in sections:
        if section["sh_type"] not in ("SHT_SYMTAB", "SHT_DYNSYM"):
            continue
        records, names = _symbol_bytes(elf, section, sections, struct.calcsize(layout), path)
        unpacked = map(getter, struct.iter_unpack(layout, records))
        _collect(unpacked, code_ends, names, len(strings), candidates, section.name, path)
        strings += names
    return _build_table(candidates, strings)


def _symbol_bytes(
    elf: ELFFile, section: Any, sections: list[Any], entry_size: int, path: str
) -> tuple[bytes, bytes]:
    if section["sh_entsize"] != entry_size:
        raise SymbolError(
            path, f"{section.name}: sh_entsize is {section['sh_entsize']}, expected {entry_size}"
        )
    # pyelftools has checked that sh_link names a string table.
    strings = sections[section["sh_link"]]
    for table in (section, strings):
        if table["sh_size"] > MAX_TABLE_BYTES:
            raise SymbolError(
                path,
                f"{table.name} is {table['sh_size']} bytes, more than the "
                f"{MAX_TABLE_BYTES} read for symbols",
            )
    return _raw(elf, section), _raw(elf, strings)


def _raw(elf: ELFFile, section: Any) -> bytes:
    elf.stream.seek(section["sh_offset"])
    return elf.stream.read(section["sh_size"])


def _collect(
    symbols: Iterable[tuple[int, ...]],
    code_ends: list[int | None],
    names: bytes,
    names_base: int,
    out: list[tuple[int, ...]],
    where: str,
    path: str,
) -> None:
    """Append (value, type rank, bind rank, unsized, order, size, name, section end)."""
    for name, value, size, info, shndx in symbols:
        kind = info & 0xF
        if not name or not value or shndx == _SHN_UNDEF or shndx >= _SHN_LORESERVE:
            continue
        if kind not in _TYPE_RANK:
            continue
        if shndx >= len(code_ends) or name >= len(names):
            raise SymbolError(path, f"{where}: symbol at {value:#x} has a bad section or name")
        code_end = code_ends[shndx]
        # ARM mapping symbols ($x, $d, $t) are NOTYPE labels, not functions.
        if code_end is None or (kind == 0 and names[name] == 0x24):
            continue
        out.append(
            (
                value,
                _TYPE_RANK[kind],
                _BIND_RANK.get(info >> 4, 1),
                size == 0,
                len(out),
                size,
                names_base + name,
                code_end,
            )
        )


def _build_table(candidates: list[tuple[int, ...]], strings: bytes) -> SymbolTable:
    """Keep the best symbol per address and give size-0 symbols an end; keep only the
    names of the symbols kept (a string table also names data, and file-local symbols
    the table leaves out: often most of its bytes)."""
    candidates.sort()
    kept = [c for i, c in enumerate(candidates) if i == 0 or c[0] != candidates[i - 1][0]]
    starts, ends, name_offsets = array("Q"), array("Q"), array("Q")
    names = bytearray()
    for index, (value, *_, size, name, code_end) in enumerate(kept):
        if size:
            end = value + size
        else:
            next_start = kept[index + 1][0] if index + 1 < len(kept) else code_end
            end = max(value, min(next_start, code_end))
        starts.append(value)
        ends.append(end)
        name_offsets.append(len(names))
        name_end = strings.find(b"\0", name)
        names += (strings[name:] if name_end < 0 else strings[name:name_end]) + b"\0"
    return SymbolTable(starts, ends, name_offsets, bytes(names))
