"""The files of a process: ``/proc/<pid>/maps``, the files it maps, its ``/proc`` entries and
files under its root, each opened so that the process cannot make the agent block or balloon.

Every open refuses what is not a regular file (a FIFO, device or socket) before reading a
byte, and every read is bounded.
"""

from __future__ import annotations

import ctypes
import errno
import io
import os
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO, TypeVar

from agent.errors import ProcessError, SymbolError

__all__ = [
    "MAX_ENTRY_BYTES",
    "READ_DEADLINE_S",
    "MAX_MAPS_BYTES",
    "MapEntry",
    "open_in_root",
    "open_mapped_file",
    "parse_maps",
    "read_maps",
    "read_process_entry",
    "read_stat_fields",
]

_DELETED = " (deleted)"
# How long a read of a process's maps may take before it is given up (see _within_deadline).
READ_DEADLINE_S = 2.0
_STUCK_READS = 8
_READ_SLOTS = threading.BoundedSemaphore(_STUCK_READS)
T = TypeVar("T")

# /proc/<pid>/stat, comm, cgroup, status are a few KB; cmdline is bounded by the
# kernel's argument space. More than this is not one of those files.
MAX_ENTRY_BYTES = 1 << 20
# A process may hold up to vm.max_map_count (65,530) mappings, each line with a
# path of up to PATH_MAX: about 270 MB at worst. Real processes list a few MB.
MAX_MAPS_BYTES = 32 << 20
# Longest maps line: the columns and a PATH_MAX path.
_MAX_MAPS_LINE = 4096 + 128


@dataclass(frozen=True, slots=True)
class MapEntry:
    """One line of ``/proc/<pid>/maps``.

    ``start``/``end`` are runtime addresses (end exclusive) and ``offset`` the
    file offset mapped at ``start``. ``path`` is the pathname column without
    the `` (deleted)`` suffix, which sets ``deleted`` instead; it is ``""``
    for anonymous memory and ``[heap]``, ``[vdso]`` and the like for special
    mappings.
    """

    start: int
    end: int
    perms: str
    offset: int
    dev_major: int
    dev_minor: int
    inode: int
    path: str
    deleted: bool = False

    @property
    def is_exec(self) -> bool:
        return self.perms[2] == "x"

    @property
    def is_file(self) -> bool:
        return self.path.startswith("/") and self.inode != 0


def parse_maps(text: str, source: str = "maps") -> list[MapEntry]:
    """Parse the text of a maps file; ``source`` names it in errors.

    >>> parse_maps("55d0-55d1 r-xp 00001000 fd:01 42 /usr/bin/my app")[0].path
    '/usr/bin/my app'
    """
    paths: dict[str, str] = {}
    return [
        _parse_line(line, lineno, source, paths)
        for lineno, line in enumerate(text.splitlines(), 1)
        if line.strip()
    ]


def read_maps(pid: int, proc_root: str = "/proc") -> list[MapEntry]:
    """Read the mappings of ``pid`` from ``<proc_root>/<pid>/maps``, line by line.

    A process that is gone, unreadable, has no mappings (a zombie or a kernel
    thread) or lists more than MAX_MAPS_BYTES raises ProcessError: there is
    nothing to symbolize. A path mapped many times is kept once.
    """
    path = f"{proc_root}/{pid}/maps"

    def read() -> list[MapEntry]:
        stream = io.TextIOWrapper(
            _open_entry(pid, path), encoding="utf-8", errors="surrogateescape", newline="\n"
        )
        with stream:
            return _read_lines(pid, path, stream)

    entries = _within_deadline(pid, path, read)
    if not entries:
        raise ProcessError(pid, "process has no memory mappings (exited or a kernel thread)")
    return entries


def _within_deadline(pid: int, path: str, read: Callable[[], T]) -> T:
    """``read()``'s answer, or ProcessError when it takes over READ_DEADLINE_S.

    Reading a process's maps takes its memory-map lock, which a process can
    hold for as long as it likes (a page fault on a hung network file system):
    the read runs on a thread of its own, so the caller is never held longer.
    A read still stuck keeps its thread; past _STUCK_READS of them, reads are
    refused at once rather than piling up threads.
    """
    if not _READ_SLOTS.acquire(blocking=False):
        raise ProcessError(pid, f"{path}: {_STUCK_READS} reads of process files are stuck")
    answer: list[tuple[bool, Any]] = []

    def run() -> None:
        try:
            answer.append((True, read()))
        except BaseException as exc:  # handed to the caller below
            answer.append((False, exc))
        finally:
            _READ_SLOTS.release()

    reader = threading.Thread(target=run, name=f"read {path}", daemon=True)
    reader.start()
    reader.join(READ_DEADLINE_S)
    if not answer:
        raise ProcessError(pid, f"{path}: no answer within {READ_DEADLINE_S:g} s")
    ok, value = answer[0]
    if not ok:
        raise value
    return value


def _read_lines(pid: int, path: str, stream: io.TextIOWrapper) -> list[MapEntry]:
    entries: list[MapEntry] = []
    paths: dict[str, str] = {}
    total = 0
    try:
        for lineno, line in enumerate(iter(lambda: stream.readline(_MAX_MAPS_LINE), ""), 1):
            total += len(line)
            if total > MAX_MAPS_BYTES:
                raise ProcessError(pid, f"{path} is longer than {MAX_MAPS_BYTES} bytes")
            if line.strip():
                entries.append(_parse_line(line.rstrip("\n"), lineno, path, paths))
    except OSError as exc:
        raise _process_error(pid, path, exc) from exc
    return entries


def _parse_line(line: str, lineno: int, source: str, paths: dict[str, str]) -> MapEntry:
    """One maps line; ``paths`` keeps one str per distinct path, however many mappings share it."""
    # The pathname is the only column that may hold spaces, so split five times.
    fields = line.split(maxsplit=5)
    if len(fields) < 5:
        raise SymbolError(source, f"line {lineno}: expected at least 5 columns: {line!r}")
    span, perms, offset, dev, inode = fields[:5]
    path = fields[5] if len(fields) == 6 else ""
    deleted = path.endswith(_DELETED)
    if deleted:
        path = path[: -len(_DELETED)]
    path = paths.setdefault(path, path)
    try:
        start_text, end_text = span.split("-")
        major, minor = dev.split(":")
        entry = MapEntry(
            start=int(start_text, 16),
            end=int(end_text, 16),
            perms=perms,
            offset=int(offset, 16),
            dev_major=int(major, 16),
            dev_minor=int(minor, 16),
            inode=int(inode),
            path=path,
            deleted=deleted,
        )
    except ValueError as exc:
        raise SymbolError(source, f"line {lineno}: malformed field ({exc}): {line!r}") from exc
    if entry.start >= entry.end or entry.offset < 0 or entry.inode < 0 or len(perms) != 4:
        raise SymbolError(source, f"line {lineno}: bad range, offset or permissions: {line!r}")
    return entry


def open_mapped_file(pid: int, entry: MapEntry, proc_root: str = "/proc") -> BinaryIO:
    """The file behind a mapping of ``pid``, which must be a regular file.

    Through ``map_files`` first: the very file mapped, even deleted, replaced
    or in another mount namespace; else by its name under the process's root
    (see open_in_root). A mapped device is refused without being opened.
    """
    base = f"{proc_root}/{pid}"
    try:
        return _open_regular(os.open(f"{base}/map_files/{entry.start:x}-{entry.end:x}", _PATH))
    except OSError as exc:
        error = exc
    try:
        stream = _open_regular(_resolve_in_root(f"{base}/root", entry.path))
    except OSError as exc:
        # The map_files error says more when the file is simply not there.
        error = error if isinstance(exc, FileNotFoundError | NotADirectoryError) else exc
    else:
        return stream
    if not os.path.exists(base):
        raise ProcessError(pid, "process is gone") from error
    raise ProcessError(pid, f"cannot open {entry.path}: {_strerror(error)}") from error


def open_in_root(root: str, path: str) -> BinaryIO | None:
    """The regular file ``path`` as a process whose root directory is ``root`` sees it.

    ``root`` is ``/proc/<pid>/root`` (or ``/``). Resolution never leaves it: a
    symlink or ``..`` that climbs out of it stays inside, as it does for the
    process (openat2's RESOLVE_IN_ROOT); on a kernel without openat2 every
    symlink is refused instead. The file is first opened with O_PATH, which
    reads nothing and never blocks, so a FIFO, device or socket is refused
    before it is really opened.

    Returns None when nothing is at ``path``; raises SymbolError naming the
    path for anything else that is not a readable regular file.
    """
    shown = f"{root.rstrip('/')}/{path.lstrip('/')}"
    try:
        return _open_regular(_resolve_in_root(root, path))
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise SymbolError(shown, _strerror(exc)) from exc


def read_process_entry(
    pid: int, name: str, proc_root: str = "/proc", limit: int = MAX_ENTRY_BYTES
) -> bytes:
    """The content of ``<proc_root>/<pid>/<name>`` (``stat``, ``comm``, ``cgroup``...).

    Raises ProcessError when the process is gone, the entry is unreadable, not
    a regular file, or longer than ``limit`` bytes.
    """
    path = f"{proc_root}/{pid}/{name}"
    with _open_entry(pid, path) as stream:
        try:
            data = stream.read(limit + 1)
        except OSError as exc:
            raise _process_error(pid, path, exc) from exc
    if len(data) > limit:
        raise ProcessError(pid, f"{path} is longer than {limit} bytes")
    return data


def read_stat_fields(pid: int, proc_root: str = "/proc") -> list[bytes]:
    """The fields of ``/proc/<pid>/stat`` after the command name: [0] is the
    state, [1] the parent, [19] the start time (fields 3, 4 and 22 of proc(5)).

    The command name may hold spaces and parentheses, so fields are counted
    after its last ``)``. Raises ProcessError when the process is gone.
    """
    stat = read_process_entry(pid, "stat", proc_root)
    return stat[stat.rfind(b")") + 2 :].split()


def _open_entry(pid: int, path: str) -> BinaryIO:
    """A /proc entry of ``pid``, opened without following a symlink or blocking."""
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise _process_error(pid, path, exc) from exc
    try:
        _check_regular(fd)
    except OSError as exc:
        os.close(fd)
        raise _process_error(pid, path, exc) from exc
    return os.fdopen(fd, "rb")


def _process_error(pid: int, path: str, exc: OSError) -> ProcessError:
    if isinstance(exc, FileNotFoundError | ProcessLookupError):
        return ProcessError(pid, "process is gone")
    return ProcessError(pid, f"cannot read {path}: {_strerror(exc)}")


# Opening and resolving files a process controls.

_PATH = os.O_PATH | os.O_CLOEXEC
_READ = os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK
_KINDS = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
    stat.S_IFDIR: "a directory",
    stat.S_IFLNK: "a symlink",
}


def _open_regular(path_fd: int) -> BinaryIO:
    """Reopen an O_PATH descriptor for reading once it is known to be a regular file.

    The reopen goes through ``/proc/self/fd``: the same inode, whatever happens
    to the path meanwhile. Takes ownership of ``path_fd``.
    """
    try:
        _check_regular(path_fd)
        fd = os.open(f"/proc/self/fd/{path_fd}", _READ)
    finally:
        os.close(path_fd)
    return os.fdopen(fd, "rb")


def _check_regular(fd: int) -> None:
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        kind = _KINDS.get(stat.S_IFMT(mode), "not a file")
        raise OSError(errno.EINVAL, f"is {kind}, not a regular file")


def _resolve_in_root(root: str, path: str) -> int:
    """An O_PATH descriptor of ``path`` resolved inside ``root`` (see open_in_root)."""
    dir_fd = os.open(root, _PATH | os.O_DIRECTORY)
    try:
        relative = path.lstrip("/") or "."
        fd = _openat2_in_root(dir_fd, relative)
        return fd if fd is not None else _walk_without_symlinks(dir_fd, relative)
    finally:
        os.close(dir_fd)


# openat2(2): one number on every architecture; struct open_how from linux/openat2.h.
_SYS_OPENAT2 = 437
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_IN_ROOT = 0x10


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_openat2_missing = False  # set once the kernel (or a seccomp filter) says ENOSYS


def _openat2_in_root(dir_fd: int, relative: str) -> int | None:
    """openat2 with RESOLVE_IN_ROOT, or None where the kernel has no openat2."""
    global _openat2_missing
    if _openat2_missing:
        return None
    how = _OpenHow(flags=_PATH, mode=0, resolve=_RESOLVE_IN_ROOT | _RESOLVE_NO_MAGICLINKS)
    encoded = os.fsencode(relative)
    for _ in range(3):  # EAGAIN: a concurrent rename raced a "..", try again
        fd = _libc.syscall(_SYS_OPENAT2, dir_fd, encoded, ctypes.byref(how), ctypes.sizeof(how))
        if fd >= 0:
            return int(fd)
        code = ctypes.get_errno()
        if code == errno.ENOSYS:
            _openat2_missing = True
            return None
        if code != errno.EAGAIN:
            break
    raise OSError(code, os.strerror(code))


def _walk_without_symlinks(dir_fd: int, relative: str) -> int:
    """Resolve one component at a time, refusing ``..`` and every symlink."""
    parts = [part for part in relative.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise OSError(errno.EXDEV, "has '..', refused without openat2")
    fd = os.dup(dir_fd)
    for part in parts:
        try:
            child = os.open(part, _PATH | os.O_NOFOLLOW, dir_fd=fd)
        finally:
            os.close(fd)
        fd = child
        if stat.S_ISLNK(os.fstat(fd).st_mode):
            os.close(fd)
            raise OSError(errno.ELOOP, "holds a symlink, refused without openat2")
    return fd


def _strerror(exc: OSError) -> str:
    return exc.strerror or str(exc)
