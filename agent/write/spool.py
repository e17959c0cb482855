"""One endpoint's bounded on-disk spool: push bodies that could not be delivered
wait here, oldest first, across restarts of the agent.

    spool = Spool(Path("/var/lib/emberscope/spool/pyroscope_4040"), max_bytes=256 << 20)
    spool.put(body, size, made_ns) # whole on disk, or not there: temp name, fsync, rename
    item = spool.oldest()          # None when empty; torn files are removed and counted
    spool.remove(item)             # once delivered

A file is a 17-byte header (magic, format, the compressed pprof size the metrics
count, the body's length and CRC-32) and the body. Names sort by the time the
profile was handed to the sender, so replay goes oldest first.
"""

from __future__ import annotations

import bisect
import logging
import os
import struct
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Spool", "SpooledItem"]

log = logging.getLogger(__name__)

_HEADER = struct.Struct("<4sBIII")  # magic, format, size, body length, body CRC-32
_MAGIC = b"EMSP"
_FORMAT = 1
_SUFFIX = ".push"
_TEMP_PREFIX = ".tmp-"


@dataclass(frozen=True, slots=True)
class SpooledItem:
    name: str  # the file's name in the spool
    body: bytes  # the serialized PushRequest, as first sent
    size: int  # compressed pprof bytes, as the metrics count them


class Spool:
    """Push bodies on disk, at most ``max_bytes`` of files; past it the oldest are
    dropped, each reported to ``on_drop(size, "spool_full")``. Unreadable files
    are removed and reported as ``"torn"``. Thread-safe."""

    def __init__(
        self,
        directory: Path,
        max_bytes: int,
        on_drop: Callable[[int, str], None] = lambda size, reason: None,
    ) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._on_drop = on_drop
        self._lock = threading.Lock()
        self._sequence = 0
        directory.mkdir(parents=True, exist_ok=True)
        self._names: list[str] = []  # sorted: oldest first
        self._files: dict[str, int] = {}  # name -> bytes on disk
        for entry in sorted(os.scandir(directory), key=lambda e: e.name):
            if entry.name.startswith(_TEMP_PREFIX):
                self._discard(entry.name, 0, "torn")  # a write a crash cut short
            elif entry.name.endswith(_SUFFIX) and entry.is_file():
                self._names.append(entry.name)
                self._files[entry.name] = entry.stat().st_size

    @property
    def count(self) -> int:
        return len(self._files)

    @property
    def bytes(self) -> int:
        return sum(self._files.values())

    def put(self, body: bytes, size: int, made_ns: int) -> bool:
        """Write one body, placed by ``made_ns`` among the others; False (and reported
        ``spool_full``) if it alone exceeds the cap. Raises OSError when the disk refuses it."""
        length = _HEADER.size + len(body)
        if length > self.max_bytes:
            self._on_drop(size, "spool_full")
            return False
        with self._lock:
            self._sequence += 1
            name = f"{made_ns:020d}-{os.getpid()}-{self._sequence:08d}{_SUFFIX}"
            while self._names and sum(self._files.values()) + length > self.max_bytes:
                oldest = self._names[0]
                self._discard(oldest, self._read_size(oldest), "spool_full")
            self._write(
                name, _HEADER.pack(_MAGIC, _FORMAT, size, len(body), zlib.crc32(body)) + body
            )
            self._files[name] = length
            bisect.insort(self._names, name)
        return True

    def oldest(self) -> SpooledItem | None:
        """The oldest whole item; torn ones met on the way are removed and reported."""
        with self._lock:
            while self._names:
                name = self._names[0]
                item = self._read(name)
                if item is not None:
                    return item
                self._discard(name, 0, "torn")
            return None

    def remove(self, item: SpooledItem) -> None:
        with self._lock:
            if self._files.pop(item.name, None) is not None:
                self._names.remove(item.name)
                _unlink(self.directory / item.name)

    def _write(self, name: str, data: bytes) -> None:
        """Whole or not at all: a temporary name, fsync, rename, fsync of the directory."""
        temporary = self.directory / f"{_TEMP_PREFIX}{name}"
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(descriptor, "wb") as stream:
                stream.write(data)
                stream.flush()
                os.fsync(stream.fileno())
            os.rename(temporary, self.directory / name)
        except OSError:
            _unlink(temporary)
            raise
        directory = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def _read(self, name: str) -> SpooledItem | None:
        """The item in ``name``, or None when it is not whole (cut short, or changed)."""
        try:
            data = (self.directory / name).read_bytes()
        except OSError as exc:
            log.warning("cannot read spooled profile %s: %s", self.directory / name, exc)
            return None
        if len(data) < _HEADER.size:
            return None
        magic, version, size, length, crc = _HEADER.unpack_from(data)
        body = data[_HEADER.size :]
        if magic != _MAGIC or version != _FORMAT or len(body) != length:
            return None
        if zlib.crc32(body) != crc:
            return None
        return SpooledItem(name, body, size)

    def _read_size(self, name: str) -> int:
        """The compressed pprof size a file's header gives, for the drop counters; 0 if torn."""
        try:
            with open(self.directory / name, "rb") as stream:
                header = stream.read(_HEADER.size)
        except OSError:
            return 0
        if len(header) < _HEADER.size:
            return 0
        return _HEADER.unpack(header)[2]

    def _discard(self, name: str, size: int, reason: str) -> None:
        if self._files.pop(name, None) is not None:
            self._names.remove(name)
        _unlink(self.directory / name)
        if reason == "torn":
            log.warning("skipped a torn spool file %s", self.directory / name)
        self._on_drop(size, reason)


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
