"""``/proc/<pid>/maps``: the memory mappings of a process, one record per line."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import BinaryIO

from agent.errors import ProcessError, SymbolError

__all__ = ["MapEntry", "open_mapped_file", "parse_maps", "read_maps"]

_DELETED = " (deleted)"


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
    return [
        _parse_line(line, lineno, source)
        for lineno, line in enumerate(text.splitlines(), 1)
        if line.strip()
    ]


def read_maps(pid: int, proc_root: str = "/proc") -> list[MapEntry]:
    """Read the mappings of ``pid`` from ``<proc_root>/<pid>/maps``.

    A process that is gone, unreadable, or has no mappings (a zombie or a
    kernel thread) raises ProcessError: there is nothing to symbolize.
    """
    path = f"{proc_root}/{pid}/maps"
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as stream:
            text = stream.read()
    except (FileNotFoundError, ProcessLookupError) as exc:
        raise ProcessError(pid, "process is gone") from exc
    except OSError as exc:
        raise ProcessError(pid, f"cannot read {path}: {exc.strerror}") from exc
    entries = parse_maps(text, path)
    if not entries:
        raise ProcessError(pid, "process has no memory mappings (exited or a kernel thread)")
    return entries


def _parse_line(line: str, lineno: int, source: str) -> MapEntry:
    # The pathname is the only column that may hold spaces, so split five times.
    fields = line.split(maxsplit=5)
    if len(fields) < 5:
        raise SymbolError(source, f"line {lineno}: expected at least 5 columns: {line!r}")
    span, perms, offset, dev, inode = fields[:5]
    path = fields[5] if len(fields) == 6 else ""
    deleted = path.endswith(_DELETED)
    if deleted:
        path = path[: -len(_DELETED)]
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
    """The file behind a mapping of ``pid``.

    Through ``map_files`` first: the very file mapped, even deleted, replaced
    or in another mount namespace; else by its name under the process's root.
    """
    base = f"{proc_root}/{pid}"
    error: OSError | None = None
    for path in (
        f"{base}/map_files/{entry.start:x}-{entry.end:x}",
        f"{base}/root/{entry.path.lstrip('/')}",
    ):
        try:
            return open(path, "rb")
        except OSError as exc:
            error = exc
    if not os.path.exists(base):
        raise ProcessError(pid, "process is gone") from error
    reason = error.strerror if error is not None else "no path"
    raise ProcessError(pid, f"cannot open {entry.path}: {reason}") from error
