"""Find the CPython runtime of a process: which mapped file holds it, where that
file is loaded, and the pthread key under which each thread keeps its
``PyThreadState``."""

from __future__ import annotations

import os
import re
import struct
import time
from dataclasses import dataclass

from agent.errors import PythonError
from agent.python.objects import ProcessMemory
from agent.python.offsets import PythonOffsets
from agent.python.runtime_file import PythonFile, Refused, RuntimeFileCache, Segment, format_version
from agent.symbols import MapEntry, read_maps

__all__ = ["Interpreter", "InterpreterFinder", "InterpreterNotReady"]

# Peers match maps paths against (lib)?python3.N (§2.1); an embedding host's
# renamed library is still tried when its name says python.
_PYTHON_NAME = re.compile(r"^(?:lib)?python3")
_EXTENSION_NAME = re.compile(r"\.cpython-[0-9]+")
_MUSL_NAME = re.compile(r"^(?:ld-musl-|libc\.musl-)")

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

    >>> found = InterpreterFinder().find(pid)
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
    gil_address: int
    """The main interpreter's ``_gil_runtime_state``: who holds the GIL."""


class InterpreterFinder:
    """Finds the CPython runtime of processes, parsing each ELF file once however many
    processes map it: ``files`` files holding a runtime are kept, and ``other_files``
    files without one.

    >>> finder = InterpreterFinder()
    >>> finder.find(pid).version
    (3, 13, 0)
    """

    def __init__(self, proc_root: str = "/proc", files: int = 64, other_files: int = 1024) -> None:
        self._proc_root = proc_root
        self._files = RuntimeFileCache(files, other_files)

    @property
    def parsed(self) -> int:
        """How many files have been parsed so far (the rest came from the cache)."""
        return self._files.parsed

    def find(self, pid: int) -> Interpreter | None:
        """The CPython runtime of ``pid``, or None when it has none.

        Raises InterpreterNotReady while the runtime is still starting, PythonError
        for a CPython that cannot be unwound (its version, musl), and ProcessError
        when the process is gone or unreadable.
        """
        maps = read_maps(pid, self._proc_root)
        unreadable = ""
        for entry, named_python in _candidates(maps, _read_exe(pid, self._proc_root)):
            found = self._files.read(pid, entry, self._proc_root)
            if isinstance(found, str):
                # A corrupt file named like Python only matters if no other file holds a runtime.
                if found and named_python and not unreadable:
                    unreadable = f"{entry.path}: {found}"
                continue
            if isinstance(found, Refused):
                raise PythonError(f"{entry.path}: {found.problem}")
            return _attach(pid, self._proc_root, maps, entry, found)
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
    pid: int, proc_root: str, maps: list[MapEntry], entry: MapEntry, found: PythonFile
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
    runtime = bias + found.runtime
    return Interpreter(
        path=entry.path,
        version=found.version,
        offsets=found.offsets,
        runtime_address=runtime,
        code_type_address=bias + found.code_type,
        tss_key=_read_tss_key(pid, proc_root, bias + tss_vaddr, found.version),
        gil_address=_find_gil(pid, proc_root, runtime, found.offsets),
    )


def _load_bias(maps: list[MapEntry], entry: MapEntry, segments: tuple[Segment, ...]) -> int | None:
    """Start of the mapping of the lowest PT_LOAD minus its page-aligned p_vaddr (0 for ET_EXEC)."""
    first = min(segments, key=lambda s: s.vaddr)
    for m in maps:
        if _same_file(m, entry) and m.offset == first.offset & _PAGE_MASK:
            return m.start - (first.vaddr & _PAGE_MASK)
    return None


def _mapped_from(
    maps: list[MapEntry], entry: MapEntry, segments: tuple[Segment, ...], bias: int, vaddr: int
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


def _find_gil(pid: int, proc_root: str, runtime: int, offsets: PythonOffsets) -> int:
    """Where the main interpreter's GIL is: in ``_PyRuntime`` up to 3.11, then
    behind a pointer of the interpreter, which is set once it is created."""
    if offsets.runtime_gil is not None:
        return runtime + offsets.runtime_gil
    assert offsets.interpreter_gil is not None  # every version has one or the other
    with ProcessMemory(pid, proc_root) as memory:
        interpreter = memory.read_pointer(runtime + offsets.runtime_main_interpreter)
        gil = memory.read_pointer(interpreter + offsets.interpreter_gil) if interpreter else 0
    if not gil:
        raise InterpreterNotReady(f"pid {pid}: the main interpreter has no GIL yet")
    return gil


def _read_tss_key(pid: int, proc_root: str, address: int, version: tuple[int, ...]) -> int:
    """``autoTSSkey._key``, once ``_is_initialized`` says pthread_key_create has run."""
    with ProcessMemory(pid, proc_root) as memory:
        for attempt in range(_TSS_TRIES):
            if attempt:
                time.sleep(_TSS_RETRY_SECONDS)
            initialized, key = _TSS.unpack(memory.read(address, _TSS.size))
            if initialized:
                break
    where = f"CPython {format_version(version)} in pid {pid}"
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
