"""Go function names from the pclntab, which survives ``-ldflags=-s -w`` and ``strip``.

Layouts follow golang/go ``src/runtime/symtab.go`` (pcHeader, _func) and
``src/debug/gosym/pclntab.go`` (parsePclnTab) for the Go 1.2, 1.16, 1.18 and 1.20+ tables.
"""

from __future__ import annotations

import os
import struct
import sys
from array import array
from bisect import bisect_right
from dataclasses import dataclass
from operator import le
from typing import Any, BinaryIO

from elftools.common.exceptions import ELFError
from elftools.construct.core import ConstructError
from elftools.elf.elffile import ELFFile

from agent.errors import SymbolError

__all__ = ["GoSymbols", "parse_gopclntab", "read_gopclntab"]


@dataclass(frozen=True, slots=True)
class _Layout:
    """Where one pclntab version keeps its tables.

    Word ``n`` is the uintptr at ``8 + n * ptrsize``, after magic, two pad
    bytes, the pc quantum and the pointer size.
    """

    version: str
    header_words: int
    # Offset of the function name table; None: names are offsets from the
    # start of the pclntab (1.2). The word after it starts the next table (cutab).
    funcnametab_word: int | None
    # Offset of the function table, also the base of _func offsets; None: the
    # table follows the one-word header and _func offsets count from 0 (1.2).
    functab_word: int | None
    # 1.18+: functab entries and _func.entryoff are uint32 offsets from
    # textStart, which linkers since 1.20 may leave 0 in the header.
    text_start_word: int | None


# pcHeader per magic: runtime/symtab.go and debug/gosym parsePclnTab.
_LAYOUTS = {
    0xFFFFFFFB: _Layout("1.2", 1, None, None, None),
    0xFFFFFFFA: _Layout("1.16", 7, 2, 6, None),
    0xFFFFFFF0: _Layout("1.18", 8, 3, 7, 2),
    0xFFFFFFF1: _Layout("1.20", 8, 3, 7, 2),
}
_QUANTA = (1, 2, 4)
_WORD_CODES = {4: "I", 8: "Q"}  # array and struct codes; array("I") is 4 bytes on Linux

# Where the Go linker puts the table: its own section, or inside .data.rel.ro
# when an external linker merged .data.rel.ro.gopclntab (PIE with -linkmode=external).
_SECTION_NAMES = (".gopclntab", ".data.rel.ro.gopclntab")
_SEARCH_SECTIONS = (".data.rel.ro", ".noptrdata")

_PARSE_ERRORS = (ELFError, ConstructError, OverflowError)


class GoSymbols:
    """Go functions of one file, sorted by entry, searched with bisect.

    A function covers its entry up to the next entry; the last one ends at
    the table's end PC. Names are decoded on first lookup and cached.

    >>> symbols = read_gopclntab(open("/usr/local/bin/app", "rb"))
    >>> symbols.lookup(vaddr) if symbols else None  # "main.hotLoop", or None
    """

    __slots__ = ("layout", "_base", "_starts", "_name_offsets", "_names_table", "_names")

    def __init__(
        self,
        layout: str,
        base: int,
        starts: array[int],
        name_offsets: array[int],
        names_table: bytes,
    ) -> None:
        self.layout = layout  # "1.2", "1.16", "1.18" or "1.20": which pcHeader was read
        self._base = base
        # One more start than functions: the last is the end of the last function.
        self._starts = starts
        self._name_offsets = name_offsets
        self._names_table = names_table
        self._names: dict[int, str | None] = {}

    def __len__(self) -> int:
        return len(self._name_offsets)

    def lookup(self, vaddr: int) -> str | None:
        """The name of the Go function covering ELF virtual address ``vaddr``."""
        offset = vaddr - self._base
        if offset < 0:
            return None
        index = bisect_right(self._starts, offset) - 1
        if index < 0 or index >= len(self._name_offsets):
            return None
        if index in self._names:
            return self._names[index]
        start = self._name_offsets[index]
        end = self._names_table.find(b"\0", start)
        # An unterminated name is corrupt; the function stays nameless.
        name = None if end < 0 else self._names_table[start:end].decode("utf-8", "replace")
        self._names[index] = name
        return name


def read_gopclntab(stream: BinaryIO, path: str = "") -> GoSymbols | None:
    """Read the Go function table of the ELF file ``stream``, or None if it has none.

    Looks for the .gopclntab section, then the runtime.pclntab and
    runtime.epclntab symbols, then the pcHeader magic in .data.rel.ro and
    .noptrdata (stripped external-linked PIE). A table found by section or
    symbols that does not parse raises SymbolError, as does a corrupt ELF file;
    a magic-search candidate that does not parse is skipped.
    """
    path = path or str(getattr(stream, "name", "<stream>"))
    stream.seek(0)
    if stream.read(4) != b"\x7fELF":
        return None
    try:
        return _read(ELFFile(stream), path)
    except _PARSE_ERRORS as exc:
        raise SymbolError(path, f"corrupt ELF file: {exc}") from exc


def parse_gopclntab(data: bytes, text_start: int = 0, path: str = "") -> GoSymbols:
    """Parse a pclntab that starts at ``data[0]``; ``data`` ends where the table may end.

    ``text_start`` (runtime.text) is used for 1.18+ tables when the header's
    textStart word is 0. Any count or offset outside ``data`` raises SymbolError.
    """
    if len(data) < 8:
        raise SymbolError(path, f"pclntab of {len(data)} bytes is shorter than its header")
    order, layout = _layout(data, path)
    quantum, ptr_size = data[6], data[7]
    if data[4:6] != b"\0\0" or quantum not in _QUANTA or ptr_size not in _WORD_CODES:
        raise SymbolError(
            path, f"pclntab {layout.version}: bad header (quantum {quantum}, pointer {ptr_size})"
        )
    header_size = 8 + layout.header_words * ptr_size
    _check(path, layout, "header", 0, header_size, len(data))
    word = _WORD_CODES[ptr_size]
    words = struct.unpack_from(f"{order}{layout.header_words}{word}", data, 8)
    nfunc = words[0]

    if layout.functab_word is None:
        functab, funcdata = header_size, 0
    else:
        functab = funcdata = words[layout.functab_word]
    if layout.funcnametab_word is None:
        names_start, names_end = 0, len(data)
    else:
        names_start = words[layout.funcnametab_word]
        names_end = words[layout.funcnametab_word + 1]  # cutab follows the names
        if names_end < names_start or names_end > len(data):
            names_end = len(data)
    _check(path, layout, "function name table", names_start, 0, len(data))

    # Functab: nfunc (entry, _func offset) pairs, then the end PC of the last function.
    field = 4 if layout.text_start_word is not None else ptr_size
    _check(
        path,
        layout,
        f"function table of {nfunc} entries",
        functab,
        (2 * nfunc + 1) * field,
        len(data),
    )
    table = array(_WORD_CODES[field])
    table.frombytes(data[functab : functab + (2 * nfunc + 1) * field])
    if (order == "<") != (sys.byteorder == "little"):
        table.byteswap()
    starts, func_offsets = table[0::2], table[1::2]
    if not all(map(le, starts[:-1], starts[1:])):
        raise SymbolError(path, f"pclntab {layout.version}: function entries are not sorted")

    name_offsets = _name_offsets(data, order, funcdata, func_offsets, field, layout, path)
    names = data[names_start:names_end]
    if name_offsets and (min(name_offsets) < 0 or max(name_offsets) >= len(names)):
        raise SymbolError(path, f"pclntab {layout.version}: a function name lies outside its table")

    base = 0
    if layout.text_start_word is not None:
        base = words[layout.text_start_word] or text_start
    return GoSymbols(layout.version, base, starts, name_offsets, names)


def _layout(data: bytes, path: str) -> tuple[str, _Layout]:
    # The table is in the target's byte order; debug/gosym tries both.
    for order in ("<", ">"):
        layout = _LAYOUTS.get(struct.unpack_from(f"{order}I", data)[0])
        if layout is not None:
            return order, layout
    raise SymbolError(path, f"not a Go pclntab (magic {data[:4].hex()})")


def _check(path: str, layout: _Layout, what: str, offset: int, length: int, size: int) -> None:
    if offset + length > size:
        raise SymbolError(
            path,
            f"pclntab {layout.version}: {what} at {offset:#x}+{length:#x} "
            f"lies past the end of the table ({size:#x})",
        )


def _name_offsets(
    data: bytes,
    order: str,
    funcdata: int,
    func_offsets: array[int],
    field: int,
    layout: _Layout,
    path: str,
) -> array[int]:
    """_func.nameoff of every function: an int32 after the entry field."""
    if not func_offsets:
        return array("i")
    # The _func records are scattered, so one bound check covers them all.
    _check(path, layout, "_func record", funcdata + max(func_offsets), field + 4, len(data))
    unpack = struct.Struct(f"{order}i").unpack_from
    at = funcdata + field
    return array("i", [unpack(data, at + offset)[0] for offset in func_offsets])


def _read(elf: ELFFile, path: str) -> GoSymbols | None:
    file_size = elf.stream.seek(0, os.SEEK_END)
    sections = list(elf.iter_sections())
    by_name = {section.name: section for section in sections}
    wanted = ("runtime.text", "runtime.pclntab", "runtime.epclntab")
    symbols = _find_symbols(elf, sections, wanted, file_size, path)
    text = by_name.get(".text")
    text_start = symbols.get("runtime.text") or (text["sh_addr"] if text is not None else 0)

    for name in _SECTION_NAMES:
        if name in by_name:
            data = _section_bytes(elf, by_name[name], file_size, path)
            return parse_gopclntab(data, text_start, path)
    start, end = symbols.get("runtime.pclntab"), symbols.get("runtime.epclntab")
    if start and end:
        data = _vaddr_bytes(elf, sections, start, end, file_size, path)
        return parse_gopclntab(data, text_start, path)
    for name in _SEARCH_SECTIONS:
        if name in by_name:
            found = _search(_section_bytes(elf, by_name[name], file_size, path), text_start, path)
            if found is not None:
                return found
    return None


def _section_bytes(elf: ELFFile, section: Any, file_size: int, path: str) -> bytes:
    offset, size = section["sh_offset"], section["sh_size"]
    if section["sh_type"] == "SHT_NOBITS":
        return b""
    if offset + size > file_size:
        raise SymbolError(
            path, f"section {section.name!r} at {offset:#x}+{size:#x} lies past the end of the file"
        )
    elf.stream.seek(offset)
    return elf.stream.read(size)


def _vaddr_bytes(
    elf: ELFFile, sections: list[Any], start: int, end: int, file_size: int, path: str
) -> bytes:
    """The bytes at ELF addresses [start, end), which must lie in one section."""
    for section in sections:
        low = section["sh_addr"]
        if (
            section["sh_type"] != "SHT_NOBITS"
            and low
            and low <= start <= end <= low + section["sh_size"]
        ):
            data = _section_bytes(elf, section, file_size, path)
            return data[start - low : end - low]
    raise SymbolError(
        path, f"runtime.pclntab {start:#x}..runtime.epclntab {end:#x} is not inside one section"
    )


def _search(data: bytes, text_start: int, path: str) -> GoSymbols | None:
    """The first pcHeader in ``data`` that parses, by magic in either byte order."""
    candidates = sorted(
        at
        for magic in _LAYOUTS
        for order in ("<", ">")
        for at in _find_all(data, struct.pack(f"{order}I", magic) + b"\0\0")
    )
    for at in candidates:
        try:
            found = parse_gopclntab(data[at:], text_start, path)
        except SymbolError:
            continue
        if len(found):
            return found
    return None


def _find_all(data: bytes, pattern: bytes) -> list[int]:
    found, at = [], data.find(pattern)
    while at >= 0:
        found.append(at)
        at = data.find(pattern, at + 1)
    return found


def _find_symbols(
    elf: ELFFile, sections: list[Any], names: tuple[str, ...], file_size: int, path: str
) -> dict[str, int]:
    """Values of a few .symtab symbols, matched on string-table offsets in bulk."""
    symtab = next((s for s in sections if s["sh_type"] == "SHT_SYMTAB"), None)
    if symtab is None:
        return {}
    if not 0 < symtab["sh_link"] < len(sections):
        raise SymbolError(path, f".symtab: sh_link {symtab['sh_link']} names no section")
    strings = _section_bytes(elf, sections[symtab["sh_link"]], file_size, path)
    wanted: dict[int, str] = {}
    for name in names:
        for at in _find_all(strings, b"\0" + name.encode() + b"\0"):
            wanted[at + 1] = name
    if not wanted:
        return {}
    # Elf64_Sym puts st_value after st_info/st_other/st_shndx; Elf32_Sym right after st_name.
    layout, value_at = ("IBBHQQ", 4) if elf.elfclass == 64 else ("IIIBBH", 1)
    layout = ("<" if elf.little_endian else ">") + layout
    entry_size = struct.calcsize(layout)
    if symtab["sh_entsize"] != entry_size or symtab["sh_size"] % entry_size:
        raise SymbolError(
            path, f".symtab: {symtab['sh_size']} bytes of {symtab['sh_entsize']}-byte entries"
        )
    found: dict[str, int] = {}
    for symbol in struct.iter_unpack(layout, _section_bytes(elf, symtab, file_size, path)):
        name = wanted.get(symbol[0])
        if name is not None and symbol[value_at]:
            found.setdefault(name, symbol[value_at])
    return found
