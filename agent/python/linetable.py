"""Source lines of CPython bytecode offsets, decoded from a code object's line table.

Build one :class:`LineTable` per code object and look up many offsets in it.
"""

from __future__ import annotations

from bisect import bisect_right

from agent.errors import PythonError

__all__ = ["LineTable"]

# 3.10 co_linetable: a line delta of -128 marks a range without a line.
_NO_LINE_310 = -128
# 3.11+ location entries (Include/cpython/code.h, _PyCodeLocationInfoKind).
_CODE_NO_COLUMNS = 13
_CODE_LONG = 14
_CODE_NONE = 15
# compile.c writes varints of ints, so 6 chunks of 6 bits hold any of them.
_MAX_VARINT_BYTES = 6


class LineTable:
    """The line table of one code object, decoded once into sorted ranges.

    ``linetable`` is ``co_lnotab`` for 3.8/3.9 and ``co_linetable`` from 3.10
    on, ``first_line`` the code object's ``co_firstlineno``::

        table = LineTable((3, 12), code_linetable, first_line=10)
        table.line(lasti * 2)

    :meth:`line` answers as ``PyCode_Addr2Line`` does, except that 0 stands
    for CPython's -1 (no line). A malformed table raises :class:`PythonError`.

    A ``cut`` table is the start of a longer one: its last entry may be
    incomplete and is dropped, and :meth:`covers` says which offsets the
    rest describes.
    """

    __slots__ = ("first_line", "_starts", "_lines", "_end", "_known_end")

    def __init__(
        self, version: tuple[int, int], linetable: bytes, first_line: int, cut: bool = False
    ) -> None:
        self.first_line = first_line
        if version[0] != 3 or version[1] < 8:
            raise PythonError(f"no line table format known for CPython {version[0]}.{version[1]}")
        if cut and version < (3, 11):
            linetable = linetable[: len(linetable) // 2 * 2]  # whole pairs only
        if version < (3, 10):
            # the last pair's line runs to the end of the bytecode, wherever that is
            ranges, last = _parse_lnotab(linetable, first_line)
            end, known_end = None, last if cut else None
        elif version == (3, 10):
            ranges, end = _parse_linetable_310(linetable, first_line)
            known_end = end if cut else None
        else:
            ranges, end = _parse_locations(linetable, first_line, cut)
            known_end = end if cut else None
        self._starts = [start for start, _ in ranges]
        self._lines = [line for _, line in ranges]
        self._end = end
        self._known_end = known_end

    def covers(self, byte_offset: int) -> bool:
        """Whether the table describes ``byte_offset``: false only past the end
        of what a cut table kept."""
        return self._known_end is None or byte_offset < self._known_end

    def line(self, byte_offset: int) -> int:
        """The line of the instruction ``byte_offset`` bytes into the bytecode.

        A negative offset (a frame that has not started) gives ``first_line``.
        0 means no line: the table says so, or (3.10+) ends before the offset;
        3.8/3.9 tables carry no end, so their last line runs on.
        """
        if byte_offset < 0:
            return self.first_line
        if self._end is not None and byte_offset >= self._end:
            return 0
        index = bisect_right(self._starts, byte_offset) - 1
        return self._lines[index] if index >= 0 else 0


def _append(ranges: list[tuple[int, int]], start: int, line: int) -> None:
    """Add a range starting at ``start``; a later range at the same start replaces it."""
    if ranges and ranges[-1][0] == start:
        ranges[-1] = (start, line)
    elif not ranges or ranges[-1][1] != line:
        ranges.append((start, line))


def _check_pairs(table: bytes, name: str) -> None:
    if len(table) % 2:
        raise PythonError(f"{name} has an odd length ({len(table)} bytes), so a pair is cut short")


def _parse_lnotab(table: bytes, first_line: int) -> tuple[list[tuple[int, int]], int]:
    """3.8/3.9 ``co_lnotab``: (byte increment, signed line increment) pairs.

    As ``PyCode_Addr2Line`` in 3.8: an increment pair applies from the offset
    it reaches, and the last line runs to the end of the bytecode. Also
    returns the offset the last pair reaches.
    """
    _check_pairs(table, "co_lnotab")
    ranges = [(0, first_line)]
    offset, line = 0, first_line
    for index in range(0, len(table), 2):
        offset += table[index]
        line += table[index + 1] - 256 if table[index + 1] >= 128 else table[index + 1]
        _append(ranges, offset, line)
    return ranges, offset


def _parse_linetable_310(table: bytes, first_line: int) -> tuple[list[tuple[int, int]], int]:
    """3.10 ``co_linetable``: (byte length, signed line delta) pairs, -128 = no line.

    Each pair covers the next ``length`` bytes (Objects/codeobject.c ``advance``).
    """
    _check_pairs(table, "co_linetable")
    ranges: list[tuple[int, int]] = []
    offset, line = 0, first_line
    for index in range(0, len(table), 2):
        length = table[index]
        delta = table[index + 1] - 256 if table[index + 1] >= 128 else table[index + 1]
        if delta != _NO_LINE_310:
            line += delta
        if length:
            _append(ranges, offset, 0 if delta == _NO_LINE_310 else line)
            offset += length
    return ranges, offset


def _parse_locations(
    table: bytes, first_line: int, cut: bool = False
) -> tuple[list[tuple[int, int]], int]:
    """3.11+ PEP 657 location table (Objects/locations.md in CPython).

    Every entry starts with a byte that has bit 7 set: bits 3-6 give its
    code, bits 0-2 its length in code units minus one. In a ``cut`` table
    an entry that runs past the end is dropped.
    """
    ranges: list[tuple[int, int]] = []
    offset, line, pos = 0, first_line, 0
    while pos < len(table):
        head = table[pos]
        if not head & 0x80:
            raise PythonError(f"location entry at byte {pos} lacks its start bit: 0x{head:02x}")
        code, length = (head >> 3) & 15, ((head & 7) + 1) * 2
        try:
            delta, pos = _read_location(table, pos + 1, code)
        except PythonError:
            if cut:
                break
            raise
        if delta is None:
            _append(ranges, offset, 0)
        else:
            line += delta
            _append(ranges, offset, line)
        offset += length
    return ranges, offset


def _read_location(table: bytes, pos: int, code: int) -> tuple[int | None, int]:
    """The line delta of the entry whose data starts at ``pos`` (None: no
    line), and where the next entry starts."""
    if code == _CODE_NONE:
        return None, pos
    if code == _CODE_NO_COLUMNS:
        return _read_signed_varint(table, pos)
    if code == _CODE_LONG:
        delta, pos = _read_signed_varint(table, pos)
        for _ in range(3):  # end line delta, column + 1, end column + 1
            _, pos = _read_varint(table, pos)
        return delta, pos
    if code >= 10:  # one-line forms: line += code - 10, then two column bytes
        return code - 10, _skip_column_bytes(table, pos, 2)
    return 0, _skip_column_bytes(table, pos, 1)  # short forms: same line, one column byte


def _skip_column_bytes(table: bytes, pos: int, count: int) -> int:
    end = pos + count
    if end > len(table) or any(byte & 0x80 for byte in table[pos:end]):
        raise PythonError(f"location entry before byte {pos} is cut short: {count} column bytes")
    return end


def _read_varint(table: bytes, pos: int) -> tuple[int, int]:
    """An unsigned varint: 6 bits a byte, low bits first, bit 6 = more follow."""
    value, shift, start = 0, 0, pos
    while True:
        if pos >= len(table) or table[pos] & 0x80:
            raise PythonError(f"varint at byte {start} of the location table is truncated")
        if pos - start == _MAX_VARINT_BYTES:
            raise PythonError(f"varint at byte {start} is longer than {_MAX_VARINT_BYTES} bytes")
        byte = table[pos]
        value |= (byte & 63) << shift
        shift += 6
        pos += 1
        if not byte & 64:
            return value, pos


def _read_signed_varint(table: bytes, pos: int) -> tuple[int, int]:
    """A zig-zag varint: the sign in bit 0, the magnitude above it."""
    value, pos = _read_varint(table, pos)
    return (-(value >> 1) if value & 1 else value >> 1), pos
