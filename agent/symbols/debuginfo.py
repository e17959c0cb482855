"""Separate debug files, found as gdb finds them, whose symbols complete a stripped binary.

gdb's order (``info "(gdb) Separate Debug Files"``): the build id under
``/usr/lib/debug/.build-id/``, then the ``.gnu_debuglink`` name beside the
binary, in its ``.debug/`` folder and under ``/usr/lib/debug/<dir>/``.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import posixpath
import re
import zlib
from collections.abc import Iterator, Sequence
from typing import BinaryIO

from agent.errors import SymbolError
from agent.symbols.elf import ElfInfo, read_build_id, read_elf
from agent.symbols.procmaps import open_in_root

__all__ = ["find_debug_file", "read_debug_symbols"]

log = logging.getLogger(__name__)

_DEBUG_ROOT = "/usr/lib/debug"
_BUILD_ID = re.compile(r"[0-9a-f]{4,}")
_CRC_CHUNK = 1 << 20
# A debug file is summed whole to check its debuglink CRC; a sparse file could
# be any size, so larger ones are skipped.
MAX_CRC_BYTES = 4 << 30


def read_debug_symbols(info: ElfInfo, binary_path: str, roots: Sequence[str]) -> ElfInfo:
    """``info`` with the ``.symtab`` of its separate debug file merged in, when it needs one.

    Only a binary without ``.symtab`` is completed: one that has it already
    names every function its debug file would. ``roots`` are the directories
    paths are looked up under, in order (the process's ``/proc/<pid>/root``,
    then ``/``). A debug file that is missing, fails its check or cannot be
    parsed leaves ``info`` as it is.
    """
    if info.has_symtab:
        return info
    found = find_debug_file(info, binary_path, roots)
    if found is None:
        return info
    path, stream = found
    with stream:
        try:
            debug = read_elf(stream, path)
        except SymbolError as exc:
            log.warning("ignoring debug file %s of %s: %s", path, binary_path, exc)
            return info
    log.debug("symbols of %s completed from %s", binary_path, path)
    symbols = debug.symbols.merged(info.symbols)
    return dataclasses.replace(info, symbols=symbols, debug_file=path)


def find_debug_file(
    info: ElfInfo, binary_path: str, roots: Sequence[str]
) -> tuple[str, BinaryIO] | None:
    """The first candidate that opens and passes its check, as (path, open stream).

    A build-id candidate must carry the same build id; a debuglink candidate
    must have the CRC32 the binary recorded. The path returned is the one
    opened, under its root. A candidate is resolved inside its root and must
    be a regular file: a FIFO or a device is refused without blocking.
    """
    for kind, candidate in _candidates(info, binary_path):
        for root in roots:
            path = _under(root, candidate)
            if path is None:
                continue
            stream = _open(root, candidate, path)
            if stream is None:
                continue
            if _matches(kind, info, stream, path):
                return path, stream
            stream.close()
    return None


def _candidates(info: ElfInfo, binary_path: str) -> Iterator[tuple[str, str]]:
    build_id = info.build_id.lower()
    if _BUILD_ID.fullmatch(build_id):
        yield "build_id", f"{_DEBUG_ROOT}/.build-id/{build_id[:2]}/{build_id[2:]}.debug"
    name = info.debuglink
    # The link is a file name: a path in it could point anywhere.
    if not name or "/" in name or name in (".", ".."):
        return
    directory = posixpath.dirname(binary_path)
    yield "debuglink", posixpath.join(directory, name)
    yield "debuglink", posixpath.join(directory, ".debug", name)
    yield "debuglink", posixpath.join(_DEBUG_ROOT + directory, name)


def _under(root: str, path: str) -> str | None:
    """``path`` inside ``root``, or None when it is relative or climbs out with ``..``."""
    if not path.startswith("/") or ".." in path.split("/"):
        return None
    return posixpath.join(root, path.lstrip("/")) if root != "/" else path


def _open(root: str, candidate: str, path: str) -> BinaryIO | None:
    try:
        return open_in_root(root, candidate)
    except SymbolError as exc:
        log.debug("no debug file at %s: %s", path, exc.reason)
        return None


def _matches(kind: str, info: ElfInfo, stream: BinaryIO, path: str) -> bool:
    try:
        if kind == "build_id":
            ok = read_build_id(stream, path) == info.build_id
        else:
            ok = _crc32(stream) == info.debuglink_crc
    except (SymbolError, OSError) as exc:
        log.debug("debug file %s unreadable: %s", path, exc)
        return False
    if not ok:
        log.info("debug file %s does not match %s (%s differs)", path, info.path, kind)
    return ok


def _crc32(stream: BinaryIO) -> int:
    """The CRC32 objcopy --add-gnu-debuglink records: zlib's, over the whole file."""
    size = stream.seek(0, os.SEEK_END)
    if size > MAX_CRC_BYTES:
        raise OSError(errno.EFBIG, f"{size} bytes, more than the {MAX_CRC_BYTES} summed")
    stream.seek(0)
    crc = 0
    while chunk := stream.read(_CRC_CHUNK):
        crc = zlib.crc32(chunk, crc)
    return crc
