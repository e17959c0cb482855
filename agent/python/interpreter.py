"""Find the CPython runtime of a process: the ELF holding ``_PyRuntime``, its
version and offsets, and the pthread key under which each thread keeps its
``PyThreadState`` (see cpython-unwinding.md §2–§4)."""

from __future__ import annotations

import logging
import os
import re
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any, BinaryIO

from agent.errors import ProcessError, PythonError, SymbolError
from agent.python.offsets import DEBUG_OFFSETS_SIZE, PythonOffsets, offsets_for, parse_debug_offsets
from agent.symbols import MapEntry, read_maps
from agent.symbols.cache import LruCache
from agent.symbols.elf import open_elf, translated_errors
from agent.symbols.procmaps import open_mapped_file

__all__ = ["Interpreter", "InterpreterNotReady", "find_interpreter"]

log = logging.getLogger(__name__)

_SUPPORTED = ((3, 8), (3, 13))
_SUPPORTED_TEXT = "3.8–3.13"

# Peers match maps paths against (lib)?python3.N (§2.1); an embedding host's
# renamed library is still tried when its name says python.
_PYTHON_NAME = re.compile(r"^(?:lib)?python3")
_VERSION_IN_NAME = re.compile(r"python([23])\.([0-9]{1,2})")
_EXTENSION_NAME = re.compile(r"\.cpython-[0-9]+")
_MUSL_NAME = re.compile(r"^(?:ld-musl-|libc\.musl-)")
# PY_VERSION as a C string: "3.9.18", "3.13.0rc1". In pyenv's builds it is
# tail-merged into the install prefix "/root/.pyenv/versions/3.9.18".
_VERSION_STRING = re.compile(
    rb"(?<![0-9.])([23])\.([0-9]{1,2})\.([0-9]{1,2})(?:(?:a|b|rc)[0-9]+)?\+?\x00"
)

_SYMBOLS = ("_PyRuntime", "PyCode_Type", "Py_Version")
_ELF64_SYM = struct.Struct("<IBBHQQ")  # st_name, st_info, st_other, st_shndx, st_value, st_size
_SHN_UNDEF = 0

# glibc keeps pthread keys below PTHREAD_KEY_2NDLEVEL_SIZE in struct
# pthread's specific_1stblock, the only place the BPF side reads (§4).
_GLIBC_FIRST_BLOCK_KEYS = 32
# Py_tss_t {int _is_initialized; int _key;}; Pyroscope retries 4 times, 10 ms apart.
_TSS = struct.Struct("<ii")
_TSS_TRIES = 4
_TSS_RETRY_SECONDS = 0.01

_PAGE_MASK = ~(os.sysconf("SC_PAGE_SIZE") - 1)


class InterpreterNotReady(PythonError):
    """The runtime is mapped but not initialised yet (the process is starting): retry later."""


@dataclass(frozen=True, slots=True)
class Interpreter:
    """The CPython runtime of one process, as the BPF unwinder needs it.

    >>> found = find_interpreter(pid)
    >>> found.version, hex(found.runtime_address), found.tss_key
    ((3, 13, 0), '0x7f3e...', 1)
    """

    path: str
    """The ELF that holds ``_PyRuntime``, as named in ``/proc/<pid>/maps``."""
    version: tuple[int, int, int]
    offsets: PythonOffsets
    runtime_address: int
    """Absolute address of ``_PyRuntime`` in the process."""
    code_type_address: int
    """Absolute address of ``PyCode_Type``."""
    tss_key: int
    """The pthread key of the thread-state TSS (glibc, below 32)."""


@dataclass(frozen=True, slots=True)
class _Segment:
    """One PT_LOAD program header."""

    offset: int
    vaddr: int
    filesz: int
    memsz: int


@dataclass(frozen=True, slots=True)
class _PythonFile:
    """What one ELF file holding a CPython runtime says about it (ELF virtual addresses)."""

    version: tuple[int, int, int]
    offsets: PythonOffsets
    runtime: int
    code_type: int
    segments: tuple[_Segment, ...]


@dataclass(frozen=True, slots=True)
class _Refused:
    """A file holding a CPython runtime that cannot be unwound, and why."""

    problem: str


def find_interpreter(pid: int, proc_root: str = "/proc") -> Interpreter | None:
    """The CPython runtime of ``pid``, or None when it has none.

    Raises InterpreterNotReady while the runtime is still starting, PythonError
    for a CPython that cannot be unwound (its version, musl), and ProcessError
    when the process is gone or unreadable.
    """
    maps = read_maps(pid, proc_root)
    unreadable = ""
    for entry, named_python in _candidates(maps, _read_exe(pid, proc_root)):
        found = _FILES.read(pid, entry, proc_root)
        if isinstance(found, str):
            # A corrupt file named like Python only matters if no other file holds a runtime.
            if found and named_python and not unreadable:
                unreadable = f"{entry.path}: {found}"
            continue
        if isinstance(found, _Refused):
            raise PythonError(f"{entry.path}: {found.problem}")
        return _attach(pid, proc_root, maps, entry, found)
    if unreadable:
        raise PythonError(unreadable)
    return None


def _candidates(maps: list[MapEntry], exe: str) -> list[tuple[MapEntry, bool]]:
    """The lowest mapping of each file worth a symbol lookup, with whether it is named
    like Python: libpython first, then python executables, the main executable,
    and any other file whose name mentions python (extension modules excepted)."""
    lowest: dict[tuple[int, int, int], MapEntry] = {}
    for entry in maps:
        key = _file_id(entry)
        if entry.is_file and (key not in lowest or entry.offset < lowest[key].offset):
            lowest[key] = entry
    ranked = []
    for order, entry in enumerate(lowest.values()):
        name = os.path.basename(entry.path)
        if _PYTHON_NAME.match(name):
            rank = 0 if name.startswith("lib") else 1
        elif entry.path == exe:
            rank = 2
        elif "python" in name.lower() and not _EXTENSION_NAME.search(name):
            rank = 3
        else:
            continue
        ranked.append((rank, order, entry))
    ranked.sort(key=lambda item: item[:2])
    return [(entry, rank < 2) for rank, _, entry in ranked]


def _read_exe(pid: int, proc_root: str) -> str:
    try:
        target = os.readlink(f"{proc_root}/{pid}/exe")
    except OSError:
        return ""
    return target.removesuffix(" (deleted)")


def _attach(
    pid: int, proc_root: str, maps: list[MapEntry], entry: MapEntry, found: _PythonFile
) -> Interpreter:
    bias = _load_bias(maps, entry, found.segments)
    if bias is None:
        raise InterpreterNotReady(f"{entry.path} is not fully mapped in pid {pid} yet")
    musl = next((m.path for m in maps if _MUSL_NAME.match(os.path.basename(m.path))), None)
    if musl:
        raise PythonError(f"pid {pid} uses musl libc ({musl}): only glibc is supported yet")
    tss_vaddr = found.runtime + found.offsets.runtime_tss_key
    if not _mapped_from(maps, entry, found.segments, bias, tss_vaddr):
        raise InterpreterNotReady(f"_PyRuntime of {entry.path} is not mapped in pid {pid} yet")
    return Interpreter(
        path=entry.path,
        version=found.version,
        offsets=found.offsets,
        runtime_address=bias + found.runtime,
        code_type_address=bias + found.code_type,
        tss_key=_read_tss_key(pid, proc_root, bias + tss_vaddr, found.version),
    )


def _load_bias(maps: list[MapEntry], entry: MapEntry, segments: tuple[_Segment, ...]) -> int | None:
    """Start of the mapping of the lowest PT_LOAD minus its page-aligned p_vaddr (0 for ET_EXEC)."""
    first = min(segments, key=lambda s: s.vaddr)
    for m in maps:
        if _same_file(m, entry) and m.offset == first.offset & _PAGE_MASK:
            return m.start - (first.vaddr & _PAGE_MASK)
    return None


def _mapped_from(
    maps: list[MapEntry], entry: MapEntry, segments: tuple[_Segment, ...], bias: int, vaddr: int
) -> bool:
    """Whether ``vaddr`` is mapped as ld.so leaves it: from its own segment of the file, or
    anonymous (.bss). While a library loads, its span is first one mapping of file offset
    0, where _PyRuntime would read as whatever bytes sit there."""
    address = bias + vaddr
    segment = next((s for s in segments if s.vaddr <= vaddr < s.vaddr + s.memsz), None)
    holder = next((m for m in maps if m.start <= address < m.end), None)
    if segment is None or holder is None:
        return False
    if holder.inode == 0:
        return True
    delta = bias + segment.vaddr - segment.offset
    return _same_file(holder, entry) and holder.start - holder.offset == delta


def _same_file(one: MapEntry, other: MapEntry) -> bool:
    return _file_id(one) == _file_id(other)


def _file_id(entry: MapEntry) -> tuple[int, int, int]:
    return entry.dev_major, entry.dev_minor, entry.inode


def _read_tss_key(pid: int, proc_root: str, address: int, version: tuple[int, ...]) -> int:
    """``autoTSSkey._key``, once ``_is_initialized`` says pthread_key_create has run."""
    path = f"{proc_root}/{pid}/mem"
    try:
        fd = os.open(path, os.O_RDONLY)
    except (FileNotFoundError, ProcessLookupError) as exc:
        raise ProcessError(pid, "process is gone") from exc
    except OSError as exc:
        raise ProcessError(pid, f"cannot open {path}: {exc.strerror}") from exc
    try:
        for attempt in range(_TSS_TRIES):
            if attempt:
                time.sleep(_TSS_RETRY_SECONDS)
            try:
                data = os.pread(fd, _TSS.size, address)
            except OSError as exc:
                raise ProcessError(
                    pid, f"cannot read memory at {address:#x}: {exc.strerror}"
                ) from exc
            if len(data) < _TSS.size:
                raise ProcessError(pid, "process is gone")
            initialized, key = _TSS.unpack(data)
            if initialized:
                break
    finally:
        os.close(fd)
    where = f"CPython {_dotted(version)} in pid {pid}"
    if not initialized:
        raise InterpreterNotReady(f"{where}: the thread-state TSS key is not initialized yet")
    if initialized != 1 or key < 0:
        raise PythonError(f"{where}: Py_tss_t reads {{{initialized}, {key}}}: not this layout")
    if key >= _GLIBC_FIRST_BLOCK_KEYS:
        raise PythonError(
            f"{where}: the thread-state TSS key is {key}; glibc keeps keys of "
            f"{_GLIBC_FIRST_BLOCK_KEYS} and above where the unwinder does not read"
        )
    return key


class _FileCache:
    """Per ELF file (device, inode, mtime, size), parsed once: a ``_PythonFile`` or
    ``_Refused``, or for a file without a CPython runtime the reason it could not be
    read ("" when it simply has none), in a larger LRU of its own.

    ``parsed`` counts the files read.
    """

    def __init__(self, size: int = 64, others_size: int = 1024) -> None:
        self._pythons: LruCache[tuple[int, ...], _PythonFile | _Refused] = LruCache(size)
        self._others: LruCache[tuple[int, ...], str] = LruCache(others_size)
        self._lock = threading.Lock()
        self.parsed = 0

    def read(self, pid: int, entry: MapEntry, proc_root: str) -> _PythonFile | _Refused | str:
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
                found: _PythonFile | _Refused | str = _read_python_file(stream, entry.path)
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

    def clear(self) -> None:
        with self._lock:
            self._pythons = LruCache(self._pythons.size)
            self._others = LruCache(self._others.size)


_FILES = _FileCache()


def _read_python_file(stream: BinaryIO, path: str) -> _PythonFile | _Refused | str:
    """The runtime in one ELF file, or "" when it has none; SymbolError if it is corrupt."""
    with translated_errors(path):
        elf, sections = open_elf(stream, path)
        if (elf.elfclass, elf.little_endian, elf["e_machine"]) != (64, True, "EM_X86_64"):
            return ""
        symbols = _find_symbols(stream, sections, path)
        segments = tuple(
            _Segment(s["p_offset"], s["p_vaddr"], s["p_filesz"], s["p_memsz"])
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
        return _Refused("cannot tell the CPython version: no Py_Version symbol nor version string")
    name = f"CPython {_dotted(version)}"
    if not _SUPPORTED[0] <= version[:2] <= _SUPPORTED[1]:
        return _Refused(f"{name} is not supported: only {_SUPPORTED_TEXT}")
    if runtime is None:
        return _Refused(f"{name} has no _PyRuntime symbol nor .PyRuntime section")
    if code_type is None:
        return _Refused(f"{name} has no PyCode_Type symbol")
    try:
        if version[:2] <= (3, 12):
            offsets = offsets_for((version[0], version[1]))
        else:
            debug = _read_vaddr(stream, path, segments, runtime, DEBUG_OFFSETS_SIZE)
            offsets = parse_debug_offsets(debug)
    except PythonError as exc:
        return _Refused(str(exc))
    if offsets.version != version[:2]:
        return _Refused(f"{name}, but _Py_DebugOffsets says {_dotted(offsets.version)}")
    return _PythonFile(version, offsets, runtime, code_type, segments)


def _read_version(
    stream: BinaryIO,
    path: str,
    sections: list[Any],
    segments: tuple[_Segment, ...],
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
    stream: BinaryIO, path: str, segments: tuple[_Segment, ...], vaddr: int, length: int
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


def _dotted(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version))
