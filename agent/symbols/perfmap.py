"""``/tmp/perf-<pid>.map``: names a JIT gives the code it generates (Node, Python 3.12, Java).

Each line is ``START SIZE name`` with START and SIZE in hex and a name that
may hold spaces (``Documentation/jit-interface.txt`` in perf's sources).

The file belongs to the profiled process, which may make it anything: a FIFO,
a symlink to ``/dev/zero``, gigabytes. So it is opened through the process's
root as a regular file only (see ``open_in_root``), refused past a size cap,
read line by line with a bounded line length, and kept as arrays and one blob
of names rather than one Python object per line.
"""

from __future__ import annotations

import logging
import os
from array import array
from bisect import bisect_right
from collections.abc import Iterator
from typing import BinaryIO

from agent.errors import SymbolError
from agent.symbols.procmaps import open_in_root

__all__ = ["DEFAULT_MAX_BYTES", "PerfMap", "PerfMapSymbols", "parse_perf_map"]

log = logging.getLogger(__name__)

# A JIT writes about 50 bytes a line: 16 MiB holds some 300,000 names.
DEFAULT_MAX_BYTES = 16 << 20
# A longer name is cut here: it would bloat every profile that holds it.
MAX_NAME_BYTES = 1024
_MAX_LINE = MAX_NAME_BYTES + 64
# Lines of fewer bytes on average are not a JIT's (an address alone is 12 hex
# digits); the cap keeps a file of tiny lines from costing many times its size.
_MIN_BYTES_PER_SYMBOL = 24
_MAX_ADDRESS = (1 << 64) - 1


class PerfMapSymbols:
    """Regions sorted by start, each with its name; the last line for a start wins.

    Region ``i`` is ``[starts[i], ends[i])`` named
    ``names[name_starts[i]:name_starts[i] + name_lengths[i]]``. About 26 bytes
    and the name per region.
    """

    __slots__ = ("_starts", "_ends", "_name_starts", "_name_lengths", "_names")

    def __init__(
        self,
        starts: array[int] | None = None,
        ends: array[int] | None = None,
        name_starts: array[int] | None = None,
        name_lengths: array[int] | None = None,
        names: bytes | bytearray = b"",
    ) -> None:
        self._starts = starts if starts is not None else array("Q")
        self._ends = ends if ends is not None else array("Q")
        self._name_starts = name_starts if name_starts is not None else array("Q")
        self._name_lengths = name_lengths if name_lengths is not None else array("H")
        self._names = names

    def __len__(self) -> int:
        return len(self._starts)

    def lookup(self, address: int) -> str | None:
        """The name of the region holding ``address``, or None."""
        index = bisect_right(self._starts, address) - 1
        if index >= 0 and address < self._ends[index]:
            return self._name(index)
        return None

    def records(self) -> Iterator[tuple[int, int, str]]:
        """(start, size, name) of every region, by start."""
        for index, start in enumerate(self._starts):
            yield start, self._ends[index] - start, self._name(index)

    def _name(self, index: int) -> str:
        start = self._name_starts[index]
        raw = self._names[start : start + self._name_lengths[index]]
        return raw.decode("utf-8", "replace")


def parse_perf_map(
    stream: BinaryIO, max_bytes: int = DEFAULT_MAX_BYTES, path: str = "perf map"
) -> tuple[PerfMapSymbols, int]:
    """The regions of a perf map and the count of malformed lines skipped.

    At most ``max_bytes`` bytes are read, one line at a time; a name longer
    than MAX_NAME_BYTES is cut. Raises SymbolError naming ``path`` when the
    lines hold more regions than ``max_bytes`` pays for (one per 24 bytes).
    """
    max_regions = max(1, max_bytes // _MIN_BYTES_PER_SYMBOL)
    table = _Table()
    malformed = 0
    left = max_bytes
    while left > 0:
        line = stream.readline(min(_MAX_LINE, left))
        if not line:
            break
        left -= len(line)
        if not line.endswith(b"\n"):
            left -= _skip_rest_of_line(stream, left)
        if len(table.starts) >= max_regions:
            raise SymbolError(path, f"more than {max_regions} regions in {max_bytes} bytes")
        malformed += not table.add(line)
    return table.sorted_symbols(), malformed


def _skip_rest_of_line(stream: BinaryIO, left: int) -> int:
    """Read past the end of an overlong line; the bytes read."""
    skipped = 0
    while skipped < left:
        chunk = stream.readline(min(1 << 16, left - skipped))
        skipped += len(chunk)
        if not chunk or chunk.endswith(b"\n"):
            break
    return skipped


class _Table:
    """Regions as read, in compact columns, before sorting."""

    def __init__(self) -> None:
        self.starts = array("Q")
        self.ends = array("Q")
        self.name_starts = array("Q")
        self.name_lengths = array("H")
        self.names = bytearray()

    def add(self, line: bytes) -> bool:
        """Keep the region of one line; False when the line is malformed."""
        fields = line.rstrip(b"\n").split(maxsplit=2)
        if len(fields) < 3:
            return not line.strip()  # a blank line is not malformed
        try:
            start, size = int(fields[0], 16), int(fields[1], 16)
        except ValueError:
            return False
        if start < 0 or size <= 0 or start + size > _MAX_ADDRESS:
            return False
        name = fields[2][:MAX_NAME_BYTES]
        self.starts.append(start)
        self.ends.append(start + size)
        self.name_starts.append(len(self.names))
        self.name_lengths.append(len(name))
        self.names += name
        return True

    def sorted_symbols(self) -> PerfMapSymbols:
        """Sorted by start; of the lines for one start, the last one read wins.

        Sorted as one int per region, start and line number packed together:
        a list of small objects, freed as soon as the columns are built.
        """
        count = len(self.starts)
        shift = max(1, count.bit_length())
        keys = [start << shift | index for index, start in enumerate(self.starts)]
        keys.sort()
        mask = (1 << shift) - 1
        out = PerfMapSymbols(names=self.names)
        for position, key in enumerate(keys):
            if position + 1 < count and keys[position + 1] >> shift == key >> shift:
                continue  # a later line names the same start
            index = key & mask
            out._starts.append(self.starts[index])
            out._ends.append(self.ends[index])
            out._name_starts.append(self.name_starts[index])
            out._name_lengths.append(self.name_lengths[index])
        return out


class PerfMap:
    """The perf map of one process, read again whenever its file changes.

    The file is opened inside the process's root, where the JIT wrote it:
    ``root`` is ``/proc/<pid>/root`` and ``path`` ``/tmp/perf-<pid>.map``. A
    file that is not a regular one, or larger than ``max_bytes``, names
    nothing: ``error`` says why and ``error_reason`` is the counter's reason
    (``perf_map_refused``, ``perf_map_too_large``). ``malformed`` counts lines
    skipped on the last read.

    >>> perf_map = PerfMap("/proc/1234/root", "/tmp/perf-1234.map")
    >>> perf_map.refresh()
    >>> perf_map.lookup(address)   # "LazyCompile:*handler /app/server.js:10", or None
    """

    __slots__ = (
        "path",
        "max_bytes",
        "malformed",
        "error",
        "error_reason",
        "_root",
        "_relative",
        "_identity",
        "_symbols",
    )

    def __init__(self, root: str, path: str, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.path = f"{root.rstrip('/')}/{path.lstrip('/')}"
        self.max_bytes = max_bytes
        self.malformed = 0
        self.error = ""
        self.error_reason = ""
        self._root = root
        self._relative = path
        self._identity: tuple[object, ...] = ()  # () while there is no file
        self._symbols = PerfMapSymbols()

    def __len__(self) -> int:
        return len(self._symbols)

    def refresh(self) -> bool:
        """Re-read the file if it changed since the last look.

        True when it was read again or newly refused (then ``error`` is set).
        Never blocks on the file and never raises.
        """
        try:
            stream = open_in_root(self._root, self._relative)
        except SymbolError as exc:
            return self._refuse(("refused", exc.reason), exc.reason, "perf_map_refused")
        if stream is None:
            # No file, or the process is gone: its names stay for the stacks
            # it left to resolve.
            return False
        with stream:
            status = os.fstat(stream.fileno())
            identity = (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)
            if identity == self._identity:
                return False
            if status.st_size > self.max_bytes:
                reason = (
                    f"{status.st_size} bytes, more than the {self.max_bytes} read "
                    "(perf_map_max_bytes)"
                )
                return self._refuse(identity, reason, "perf_map_too_large")
            try:
                symbols, malformed = parse_perf_map(stream, self.max_bytes, self.path)
            except (SymbolError, OSError) as exc:
                reason = exc.reason if isinstance(exc, SymbolError) else str(exc)
                return self._refuse(identity, reason, "perf_map_refused")
        if malformed:
            log.debug("%s: %d malformed lines skipped", self.path, malformed)
        return self._set(identity, symbols, malformed)

    def lookup(self, address: int) -> str | None:
        """The name of the region holding ``address``, as of the last refresh."""
        return self._symbols.lookup(address)

    def records(self) -> Iterator[tuple[int, int, str]]:
        return self._symbols.records()

    def _set(self, identity: tuple[object, ...], symbols: PerfMapSymbols, malformed: int) -> bool:
        changed = identity != self._identity
        self._identity = identity
        self._symbols, self.malformed = symbols, malformed
        self.error = self.error_reason = ""
        return changed

    def _refuse(self, identity: tuple[object, ...], error: str, reason: str) -> bool:
        if identity == self._identity:
            return False
        self._set(identity, PerfMapSymbols(), 0)
        self.error, self.error_reason = error, reason
        return True
