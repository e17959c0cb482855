"""``/tmp/perf-<pid>.map``: names a JIT gives the code it generates (Node, Python 3.12, Java).

Each line is ``START SIZE name`` with START and SIZE in hex and a name that
may hold spaces (``Documentation/jit-interface.txt`` in perf's sources).
"""

from __future__ import annotations

import logging
import os
from bisect import bisect_right
from typing import TextIO

__all__ = ["PerfMap", "parse_perf_map"]

log = logging.getLogger(__name__)


def parse_perf_map(stream: TextIO) -> tuple[list[tuple[int, int, str]], int]:
    """(start, size, name) records sorted by start, and the count of malformed lines skipped.

    A JIT that moves code appends a new line for the same start; the last one wins.
    """
    by_start: dict[int, tuple[int, str]] = {}
    malformed = 0
    for line in stream:
        fields = line.rstrip("\n").split(maxsplit=2)
        try:
            start, size = int(fields[0], 16), int(fields[1], 16)
            name = fields[2]
        except (IndexError, ValueError):
            malformed += bool(line.strip())
            continue
        if start < 0 or size <= 0:
            malformed += 1
            continue
        by_start[start] = (size, name)
    return [(start, *by_start[start]) for start in sorted(by_start)], malformed


class PerfMap:
    """The perf map of one process, read again whenever its file has changed size.

    ``path`` is opened through the process's root, where the JIT wrote it:
    ``/proc/<pid>/root/tmp/perf-<pid>.map``. ``malformed`` counts lines skipped
    on the last read.

    >>> perf_map = PerfMap("/proc/1234/root/tmp/perf-1234.map")
    >>> perf_map.refresh()
    >>> perf_map.lookup(address)   # "LazyCompile:*handler /app/server.js:10", or None
    """

    __slots__ = ("path", "malformed", "_size", "_starts", "_records")

    def __init__(self, path: str) -> None:
        self.path = path
        self.malformed = 0
        self._size = -1
        self._starts: list[int] = []
        self._records: list[tuple[int, int, str]] = []

    def __len__(self) -> int:
        return len(self._records)

    def refresh(self) -> bool:
        """Re-read the file if its size changed since the last read; True if it was read."""
        try:
            size = os.stat(self.path).st_size
        except OSError:
            size = -1
        if size == self._size:
            return False
        self._size = size
        self._records, self.malformed = self._read() if size >= 0 else ([], 0)
        self._starts = [record[0] for record in self._records]
        if self.malformed:
            log.debug("%s: %d malformed lines skipped", self.path, self.malformed)
        return True

    def lookup(self, address: int) -> str | None:
        """The name of the region holding ``address``, as of the last refresh."""
        index = bisect_right(self._starts, address) - 1
        if index >= 0:
            start, size, name = self._records[index]
            if address < start + size:
                return name
        return None

    def _read(self) -> tuple[list[tuple[int, int, str]], int]:
        try:
            with open(self.path, encoding="utf-8", errors="replace") as stream:
                return parse_perf_map(stream)
        except OSError as exc:
            log.debug("cannot read %s: %s", self.path, exc.strerror)
            return [], 0
