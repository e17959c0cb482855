"""What one ELF file says about the CPython runtime it holds: where ``_PyRuntime`` and
``PyCode_Type`` are, which version it is and its offsets,
parsed once per file."""

from __future__ import annotations

import logging
import os
import re
import struct
import threading
from dataclasses import dataclass
from typing import Any, BinaryIO

from agent.errors import PythonError, SymbolError
from agent.python.offsets import DEBUG_OFFSETS_SIZE, PythonOffsets, offsets_for, parse_debug_offsets
from agent.symbols import MapEntry
from agent.symbols.cache import LruCache
from agent.symbols.elf import open_elf, translated_errors
from agent.symbols.procmaps import open_mapped_file

__all__ = [
    "PythonFile",
    "Refused",
    "RuntimeFileCache",
    "Segment",
    "format_version",
    "read_python_file",
]

log = logging.getLogger(__name__)

_SUPPORTED = ((3, 8), (3, 13))
_SUPPORTED_TEXT = "3.8–3.13"

_VERSION_IN_NAME = re.compile(r"python([23])\.([0-9]{1,2})")
# PY_VERSION as a C string: "3.9.18", "3.13.0rc1". In pyenv's builds it is
# tail-merged into the install prefix "/root/.pyenv/versions/3.9.18".
_VERSION_STRING = re.compile(
    rb"(?<![0-9.])([23])\.([0-9]{1,2})\.([0-9]{1,2})(?:(?:a|b|rc)[0-9]+)?\+?\x00"
)

_SYMBOLS = ("_PyRuntime", "PyCode_Type", "Py_Version")
_ELF64_SYM = struct.Struct("<IBBHQQ")  # st_name, st_info, st_other, st_shndx, st_value, st_size
_SHN_UNDEF = 0


@dataclass(frozen=True, slots=True)
class Segment:
    """One PT_LOAD program header."""

    offset: int
    vaddr: int
    filesz: int
    memsz: int


@dataclass(frozen=True, slots=True)
class PythonFile:
    """What one ELF file holding a CPython runtime says about it (ELF virtual addresses)."""

    version: tuple[int, int, int]
    offsets: PythonOffsets
    runtime: int
    code_type: int
    segments: tuple[Segment, ...]


@dataclass(frozen=True, slots=True)
class Refused:
    """A file holding a CPython runtime that cannot be unwound, and why."""

    problem: str


class RuntimeFileCache:
    """Per ELF file (device, inode, mtime, size), parsed once: a ``PythonFile`` or
    ``Refused``, or for a file without a CPython runtime the reason it could not be
    read ("" when it simply has none), in a larger LRU of its own.

    ``parsed`` counts the files read.
    """

    def __init__(self, size: int = 64, others_size: int = 1024) -> None:
        self._pythons: LruCache[tuple[int, ...], PythonFile | Refused] = LruCache(size)
        self._others: LruCache[tuple[int, ...], str] = LruCache(others_size)
        self._lock = threading.Lock()
        self.parsed = 0

    def read(self, pid: int, entry: MapEntry, proc_root: str) -> PythonFile | Refused | str:
        """What the file mapped by ``entry`` holds, opened through the process's root."""
        with open_mapped_file(pid, entry, proc_root) as stream:
            stat = os.fstat(stream.fileno())
            key = (stat.st_dev, stat.st_ino, stat.st_mtime_ns, stat.st_size)
            with self._lock:
                known = self._pythons.get(key)
                if known is None:
                    known = self._others.get(key)
            if known is not None:
                return known
            try:
                found: PythonFile | Refused | str = read_python_file(stream, entry.path)
            except (SymbolError, OSError) as exc:
                log.debug("cannot read %s for a CPython runtime: %s", entry.path, exc)
                found = f"cannot be read for a CPython runtime: {exc}"
        with self._lock:
            self.parsed += 1
            if isinstance(found, str):
                self._others.put(key, found)
            else:
                self._pythons.put(key, found)
        return found


def read_python_file(stream: BinaryIO, path: str) -> PythonFile | Refused | str:
    """The runtime in one ELF file, or "" when it has none; SymbolError if it is corrupt."""
    with translated_errors(path):
        elf, sections = open_elf(stream, path)
        if (elf.elfclass, elf.little_endian, elf["e_machine"]) != (64, True, "EM_X86_64"):
            return ""
        symbols = _find_symbols(stream, sections, path)
        segments = tuple(
            Segment(s["p_offset"], s["p_vaddr"], s["p_filesz"], s["p_memsz"])
            for s in elf.iter_segments()
            if s["p_type"] == "PT_LOAD"
        )
    runtime = symbols.get("_PyRuntime")
    if runtime is None:
        section = next((s for s in sections if s.name == ".PyRuntime"), None)
        runtime = section["sh_addr"] if section is not None else None
    code_type = symbols.get("PyCode_Type")
    if runtime is None and code_type is None:
        return ""
    if not segments:
        raise SymbolError(path, "no PT_LOAD segment")
    version = _read_version(stream, path, sections, segments, symbols, runtime is not None)
    if version is None:
        return Refused("cannot tell the CPython version: no Py_Version symbol nor version string")
    name = f"CPython {format_version(version)}"
    if not _SUPPORTED[0] <= version[:2] <= _SUPPORTED[1]:
        return Refused(f"{name} is not supported: only {_SUPPORTED_TEXT}")
    if runtime is None:
        return Refused(f"{name} has no _PyRuntime symbol nor .PyRuntime section")
    if code_type is None:
        return Refused(f"{name} has no PyCode_Type symbol")
    try:
        if version[:2] <= (3, 12):
            offsets = offsets_for((version[0], version[1]))
        else:
            debug = _read_vaddr(stream, path, segments, runtime, DEBUG_OFFSETS_SIZE)
            offsets = parse_debug_offsets(debug)
    except PythonError as exc:
        return Refused(str(exc))
    if offsets.version != version[:2]:
        return Refused(f"{name}, but _Py_DebugOffsets says {format_version(offsets.version)}")
    return PythonFile(version, offsets, runtime, code_type, segments)


def _read_version(
    stream: BinaryIO,
    path: str,
    sections: list[Any],
    segments: tuple[Segment, ...],
    symbols: dict[str, int],
    has_runtime: bool,
) -> tuple[int, int, int] | None:
    """``Py_Version`` (PY_VERSION_HEX, exported since 3.11), else the version string.

    _Py_DebugOffsets also carries the version, but only from 3.13, which has Py_Version.
    """
    if "Py_Version" in symbols:
        data = _read_vaddr(stream, path, segments, symbols["Py_Version"], 4)
        (hexversion,) = struct.unpack("<I", data)
        return hexversion >> 24, (hexversion >> 16) & 0xFF, (hexversion >> 8) & 0xFF
    rodata = next((s for s in sections if s.name == ".rodata"), None)
    if rodata is None:
        return None
    stream.seek(rodata["sh_offset"])
    # With _PyRuntime but without Py_Version, it is 3.7–3.10.
    minors = range(7, 11) if has_runtime else None
    return _grep_version(stream.read(rodata["sh_size"]), _version_in_name(path), minors)


def _find_symbols(stream: BinaryIO, sections: list[Any], path: str) -> dict[str, int]:
    """Values of the defined symbols of :data:`_SYMBOLS`, .dynsym first, then .symtab.

    Read in bulk: a name's string-table offsets are found with ``bytes.find``, then
    records are matched on st_name alone.
    """
    found: dict[str, int] = {}
    for kind in ("SHT_DYNSYM", "SHT_SYMTAB"):
        for section in (s for s in sections if s["sh_type"] == kind):
            targets = _name_offsets(stream, sections, section, found, path)
            if not targets:
                continue
            stream.seek(section["sh_offset"])
            records = stream.read(section["sh_size"] // _ELF64_SYM.size * _ELF64_SYM.size)
            for name, _, _, shndx, value, _ in _ELF64_SYM.iter_unpack(records):
                symbol = targets.get(name)
                if symbol is not None and shndx != _SHN_UNDEF and symbol not in found:
                    found[symbol] = value
    return found


def _name_offsets(
    stream: BinaryIO, sections: list[Any], section: Any, found: dict[str, int], path: str
) -> dict[int, str]:
    """Where each symbol still missing starts in the section's string table."""
    link = section["sh_link"]
    if section["sh_entsize"] != _ELF64_SYM.size or not 0 < link < len(sections):
        raise SymbolError(path, f"{section.name}: bad entry size or string table link")
    strings = sections[link]
    stream.seek(strings["sh_offset"])
    names = stream.read(strings["sh_size"])
    targets = {}
    for symbol in _SYMBOLS:
        if symbol in found:
            continue
        needle = symbol.encode() + b"\0"
        at = names.find(needle)
        while at >= 0:
            targets[at] = symbol
            at = names.find(needle, at + 1)
    return targets


def _read_vaddr(
    stream: BinaryIO, path: str, segments: tuple[Segment, ...], vaddr: int, length: int
) -> bytes:
    """``length`` bytes of the file at ELF virtual address ``vaddr``."""
    for segment in segments:
        if segment.vaddr <= vaddr and vaddr + length <= segment.vaddr + segment.filesz:
            stream.seek(vaddr - segment.vaddr + segment.offset)
            data = stream.read(length)
            if len(data) == length:
                return data
    raise SymbolError(path, f"{length} bytes at {vaddr:#x} are not in the file")


def _grep_version(
    data: bytes, hint: tuple[int, int] | None, minors: range | None
) -> tuple[int, int, int] | None:
    """The version string of the interpreter among those in ``data``: the one of the minor
    version the file name carries, else the only minor among the plausible ones."""
    found = [tuple(int(part) for part in m.groups()) for m in _VERSION_STRING.finditer(data)]
    if hint is not None:
        found = [v for v in found if v[:2] == hint]
    elif minors is not None:
        found = [v for v in found if v[0] == 3 and v[1] in minors]
    if not found or len({v[:2] for v in found}) > 1:
        return None
    return found[0][0], found[0][1], found[0][2]


def _version_in_name(path: str) -> tuple[int, int] | None:
    match = _VERSION_IN_NAME.search(os.path.basename(path))
    return (int(match[1]), int(match[2])) if match else None


def format_version(version: tuple[int, ...]) -> str:
    """``(3, 13, 0)`` as ``"3.13.0"``."""
    return ".".join(map(str, version))
