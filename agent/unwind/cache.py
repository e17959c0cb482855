"""Unwind tables on disk, one file per build ID: ``<dir>/<build-id hex>.unwind``.

The layout: a header (magic, version, lengths, CRC32 of the rest), the build ID,
the rows, the function starts and ends, then the counters as JSON. Files are
written to a temporary name and renamed, so a reader sees a whole file or none;
a file that is short, corrupt, of another version or of another build ID is
rejected with UnwindError and, through :meth:`TableCache.load_or_build`, rebuilt.
"""

from __future__ import annotations

import json
import logging
import os
import re
import struct
import sys
import tempfile
import zlib
from array import array
from typing import BinaryIO

from agent.unwind.cfi import UnwindError
from agent.unwind.table import UnwindTable, build_table

__all__ = ["CACHE_VERSION", "TableCache"]

log = logging.getLogger(__name__)

# Bump on any change to the row format or to what the builder emits.
CACHE_VERSION = 1
_MAGIC = b"EMBUNWND"
# magic, version, build ID bytes, rows, functions, JSON bytes, CRC32 of everything after
_HEADER = struct.Struct("<8sIIIIII")
_BUILD_ID = re.compile(r"[0-9a-f]{2,256}")


class TableCache:
    """A directory of unwind tables keyed by GNU build ID.

    >>> cache = TableCache("/var/cache/emberscope/unwind")
    >>> table = cache.load_or_build(build_id, open(path, "rb"), path)

    ``rejected`` counts files found unusable, ``write_errors`` tables that
    could not be stored (the table is still returned).
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = os.fspath(directory)
        self.rejected = 0
        self.write_errors = 0

    def path(self, build_id: str) -> str:
        """Where the table of ``build_id`` lives; refuses anything but hex digits."""
        if not _BUILD_ID.fullmatch(build_id):
            raise UnwindError(f"{build_id!r} is not a build ID")
        return os.path.join(self.directory, f"{build_id}.unwind")

    def load(self, build_id: str) -> UnwindTable | None:
        """The stored table of ``build_id``, None when there is none.

        Raises UnwindError for a file that cannot be trusted.
        """
        path = self.path(build_id)
        try:
            with open(path, "rb") as file:
                data = file.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise UnwindError(f"cannot read the cached table: {exc.strerror}", path) from exc
        return _decode(data, build_id, path)

    def store(self, build_id: str, table: UnwindTable) -> None:
        """Write the table of ``build_id`` atomically; OSError becomes UnwindError."""
        path = self.path(build_id)
        data = _encode(build_id, table)
        try:
            os.makedirs(self.directory, exist_ok=True)
            fd, temporary = tempfile.mkstemp(prefix=f".{build_id}.", dir=self.directory)
        except OSError as exc:
            raise UnwindError(f"cannot write the cached table: {exc.strerror}", path) from exc
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
            os.replace(temporary, path)
        except OSError as exc:
            os.unlink(temporary)
            raise UnwindError(f"cannot write the cached table: {exc.strerror}", path) from exc

    def load_or_build(self, build_id: str, stream: BinaryIO, path: str = "") -> UnwindTable:
        """The stored table, or one built from ``stream`` and stored; an unusable file
        is rebuilt. Errors of the file itself (its CFI) still raise UnwindError."""
        try:
            table = self.load(build_id)
        except UnwindError as exc:
            self.rejected += 1
            log.debug("rebuilding the unwind table: %s", exc)
            table = None
        if table is not None:
            return table
        table = build_table(stream, path)
        try:
            self.store(build_id, table)
        except UnwindError as exc:
            self.write_errors += 1
            log.debug("unwind table not cached: %s", exc)
        return table


def _encode(build_id: str, table: UnwindTable) -> bytes:
    meta = json.dumps({"unsupported": table.unsupported, "overlaps": table.overlaps}).encode()
    raw_id = bytes.fromhex(build_id)
    body = b"".join(
        (raw_id, table.rows, _little(table.functions), _little(table.function_ends), meta)
    )
    header = _HEADER.pack(
        _MAGIC,
        CACHE_VERSION,
        len(raw_id),
        table.row_count,
        len(table.functions),
        len(meta),
        zlib.crc32(body),
    )
    return header + body


def _decode(data: bytes, build_id: str, path: str) -> UnwindTable:
    if len(data) < _HEADER.size:
        raise UnwindError(f"cached table of {len(data)} bytes is shorter than its header", path)
    magic, version, id_size, rows, functions, meta_size, crc = _HEADER.unpack_from(data)
    if magic != _MAGIC:
        raise UnwindError("not an Emberscope unwind table", path)
    if version != CACHE_VERSION:
        raise UnwindError(f"cached table has version {version}, not {CACHE_VERSION}", path)
    body = memoryview(data)[_HEADER.size :]
    if len(body) != id_size + 8 * rows + 16 * functions + meta_size:
        raise UnwindError("cached table is truncated or padded", path)
    if zlib.crc32(body) != crc:
        raise UnwindError("cached table fails its CRC32", path)
    if body[:id_size].hex() != build_id:
        raise UnwindError(f"cached table belongs to build ID {body[:id_size].hex()}", path)
    at = id_size + 8 * rows
    starts = _array(body[at : at + 8 * functions])
    ends = _array(body[at + 8 * functions : at + 16 * functions])
    try:
        meta = json.loads(bytes(body[at + 16 * functions :]))
        unsupported = {str(reason): int(count) for reason, count in meta["unsupported"].items()}
        overlaps = int(meta["overlaps"])
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UnwindError(f"cached table counters unreadable: {exc}", path) from exc
    return UnwindTable(bytes(body[id_size:at]), starts, ends, unsupported, overlaps)


def _little(values: array[int]) -> bytes:
    if sys.byteorder == "little":
        return values.tobytes()
    swapped = array("Q", values)
    swapped.byteswap()
    return swapped.tobytes()


def _array(raw: memoryview) -> array[int]:
    values = array("Q")
    values.frombytes(raw)
    if sys.byteorder != "little":
        values.byteswap()
    return values
