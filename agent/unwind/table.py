"""Compile CFI rows into the compact unwind table the BPF walker searches.

A row is 8 bytes, ``struct unwind_row`` (format ``<IBbH``): the first address
it covers, the CFA type, rbp's save slot in 8-byte units from the CFA, and the
CFA offset.
"""

from __future__ import annotations

import gc
import struct
import sys
from array import array
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import IntEnum
from itertools import accumulate
from operator import attrgetter
from typing import Any, BinaryIO

from agent.unwind.cfi import (
    RBP,
    RSP,
    RULE_NONE,
    RULE_OFFSET,
    RULE_SAME_VALUE,
    RULE_UNDEFINED,
    Fde,
    UnwindError,
    execute,
    parse_cfi,
)
from agent.unwind.sections import read_cfi_sections

__all__ = ["CfaType", "ROW_FORMAT", "UnwindTable", "build_table", "compile_table", "lookup"]

ROW_FORMAT = "<IBbH"
ROW_SIZE = 8
_MAX_PC = 0xFFFFFFFF
# Tombstones that linkers write for the FDEs of discarded code in .debug_frame.
_TOMBSTONES = (0, 0xFFFFFFFFFFFFFFFF, 0xFFFFFFFFFFFFFFFE)


class CfaType(IntEnum):
    """``enum cfa_type`` of the row: how the walker finds the caller."""

    NONE = 0  # no FDE covers the address: the stack ends
    RSP = 1  # CFA = rsp + cfa_offset
    RBP = 2  # CFA = rbp + cfa_offset
    PLT = 3  # CFA = rsp + cfa_offset + ((rip & 15) >= rbp_offset ? 8 : 0)
    SIGNAL = 4  # a signal trampoline: the registers are in the ucontext on the stack
    END = 5  # the return address is undefined: the outermost frame
    UNSUPPORTED = 6  # a rule the table cannot express (counted by reason)


@dataclass(frozen=True, slots=True)
class UnwindTable:
    """The unwind rows of one file, and the functions its FDEs cover.

    >>> table = build_table(open("/usr/lib/x86_64-linux-gnu/libc.so.6", "rb"))
    >>> lookup(table, 0x27200)     # (pc, cfa_type, rbp_offset, cfa_offset)
    >>> table.function_at(0x27213) # (start, end) of the FDE holding it, or None
    """

    rows: bytes  # packed struct unwind_row, sorted by pc
    functions: array[int]  # FDE start addresses, sorted
    function_ends: array[int]  # the matching end addresses
    # reason -> number of CFI rows (before merging) the table could not express
    unsupported: dict[str, int] = field(default_factory=dict)
    overlaps: int = 0  # FDEs cut short because a later-starting one overlapped them

    @property
    def row_count(self) -> int:
        return len(self.rows) // ROW_SIZE

    @property
    def nbytes(self) -> int:
        """Memory of the rows and the function ranges."""
        return len(self.rows) + (len(self.functions) + len(self.function_ends)) * 8

    def pcs(self) -> memoryview:
        """The rows' pc fields, without copying (little-endian host)."""
        return memoryview(self.rows).cast("I")[::2]

    def function_at(self, address: int) -> tuple[int, int] | None:
        """``(start, end)`` of the FDE holding ``address``: a function's bounds in stripped code."""
        index = bisect_right(self.functions, address) - 1
        if index >= 0 and address < self.function_ends[index]:
            return self.functions[index], self.function_ends[index]
        return None


def lookup(table: UnwindTable, address: int) -> tuple[int, int, int, int]:
    """The row covering ``address``: ``(pc, cfa_type, rbp_offset, cfa_offset)``.

    Below the first row the answer is a CFA_NONE row at pc 0.
    """
    index = bisect_right(table.pcs(), address) - 1
    if index < 0:
        return (0, CfaType.NONE, 0, 0)
    return _ROW.unpack_from(table.rows, index * ROW_SIZE)


def build_table(
    stream: BinaryIO, path: str = "", debug_stream: BinaryIO | None = None
) -> UnwindTable:
    """The unwind table of an x86-64 ELF file.

    .eh_frame rules first; .debug_frame (of the file, or of its separate debug
    file ``debug_stream``) fills the code no .eh_frame FDE covers: a binary
    built with ``-fno-asynchronous-unwind-tables -g`` keeps only the C runtime's
    FDEs in .eh_frame. A file with neither section gives an empty table.
    Malformed CFI, or code above 4 GiB, raises UnwindError.
    """
    with _collector_paused():
        return _build(stream, path or str(getattr(stream, "name", "<stream>")), debug_stream)


def _build(stream: BinaryIO, path: str, debug_stream: BinaryIO | None) -> UnwindTable:
    sections = [(path, section) for section in read_cfi_sections(stream, path)]
    if debug_stream is not None:
        debug_path = str(getattr(debug_stream, "name", "<debug stream>"))
        sections += [
            (debug_path, section)
            for section in read_cfi_sections(debug_stream, debug_path)
            if section.name == ".debug_frame"
        ]
    eh_frame: list[Fde] = []
    debug_frame: list[Fde] = []
    for where, section in sections:
        is_debug = section.name == ".debug_frame"
        try:
            fdes = parse_cfi(section.data, section.address, debug_frame=is_debug)
        except UnwindError as exc:
            raise UnwindError(f"{section.name}: {exc.reason}", where) from exc
        (debug_frame if is_debug else eh_frame).extend(fdes)
    try:
        return compile_table(eh_frame + _uncovered(debug_frame, eh_frame))
    except UnwindError as exc:
        raise UnwindError(exc.reason, path) from exc


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector: a build allocates some 100k short-lived
    tuples, and the collections they trigger rescan the growing table each time
    (a third of the build time). Only acyclic data is made, so nothing is lost."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _uncovered(extra: list[Fde], fdes: list[Fde]) -> list[Fde]:
    """The FDEs of ``extra`` whose range meets none of ``fdes``'s."""
    if not extra or not fdes:
        return extra
    ranges = sorted((fde.pc_begin, fde.pc_end) for fde in fdes if fde.pc_end > fde.pc_begin)
    starts = [start for start, _ in ranges]
    # The furthest end among the ranges starting at or before each index.
    reach = list(accumulate((end for _, end in ranges), max))
    kept = []
    for fde in extra:
        # Ranges starting before fde's end; the one reaching furthest must stop by its start.
        index = bisect_left(starts, fde.pc_end) - 1
        if index < 0 or reach[index] <= fde.pc_begin:
            kept.append(fde)
    return kept


def compile_table(fdes: list[Fde]) -> UnwindTable:
    """Turn FDEs into rows: sorted, merged, gaps closed with CFA_NONE rows."""
    fdes = [fde for fde in fdes if fde.pc_end > fde.pc_begin and fde.pc_begin not in _TOMBSTONES]
    fdes.sort(key=attrgetter("pc_begin", "offset"))
    if fdes and max(fde.pc_end for fde in fdes) > _MAX_PC + 1:
        raise UnwindError("code above 4 GiB cannot be described by 32-bit row addresses")
    compiler = _Compiler()
    words = array("Q")
    functions = array("Q")
    function_ends = array("Q")
    last = -1  # the previous row's rule word
    overlaps = 0
    for index, fde in enumerate(fdes):
        start, end = fde.pc_begin, fde.pc_end
        following = fdes[index + 1].pc_begin if index + 1 < len(fdes) else _MAX_PC + 2
        if following < end:
            overlaps += 1
            end = following
            if end == start:
                continue
        rows, last_loc = compiler.program(fde, end - start)
        if rows[0][1] == last:
            rows = rows[1:]
        if last_loc < end - start:  # every row lies inside: the common case
            words.extend([start + loc | word for loc, word in rows])
            if rows:
                last = rows[-1][1]
        else:
            for loc, word in rows:
                if start + loc >= end:
                    break
                words.append(start + loc | word)
                last = word
        functions.append(start)
        function_ends.append(end)
        if end < following and last != 0:
            words.append(end)  # a CFA_NONE row: the gap up to the next function
            last = 0
    if sys.byteorder != "little":
        words.byteswap()
    return UnwindTable(
        words.tobytes(), functions, function_ends, dict(compiler.unsupported), overlaps
    )


# A compiled program: its rows as (loc, rule word) with no two consecutive words
# equal, the loc of its last CFI row, and (loc, reason) of its unsupported CFI rows.
_Program = tuple[list[tuple[int, int]], int, list[tuple[int, str]]]


class _Compiler:
    """Rows of FDEs as ``(loc, rule word)``, the word being the row's upper 32 bits
    already shifted; programs seen before (same CIE, same bytes) are not run again."""

    def __init__(self) -> None:
        self.unsupported: Counter[str] = Counter()
        self._programs: dict[tuple[int, bytes], _Program] = {}
        self._words: dict[tuple[Any, ...], tuple[int, str]] = {}

    def program(self, fde: Fde, length: int) -> tuple[list[tuple[int, int]], int]:
        """The FDE's rows and the loc of its last CFI row; counts its unsupported
        rows below ``length``."""
        known = self._programs.get((fde.cie.offset, fde.instructions))
        if known is None:
            known = self._compile(fde)
        rows, last_loc, reasons = known
        for loc, reason in reasons:
            if loc < length:
                self.unsupported[reason] += 1
        return rows, last_loc

    def _compile(self, fde: Fde) -> _Program:
        if fde.cie.signal:
            known: _Program = ([(0, _SIGNAL_WORD)], 0, [])
            self._programs[(fde.cie.offset, fde.instructions)] = known
            return known
        cfi_rows, absolute = execute(fde)
        words = self._words
        rows = []
        reasons = []
        last = -1
        for loc, rules in cfi_rows:
            compiled = words.get(rules)
            if compiled is None:
                compiled = words[rules] = _compile_rules(rules)
            word, reason = compiled
            if word != last:
                rows.append((loc, word))
                last = word
            if reason:
                reasons.append((loc, reason))
        known = (rows, cfi_rows[-1][0], reasons)
        if not absolute:
            self._programs[(fde.cie.offset, fde.instructions)] = known
        return known


def _word(cfa_type: int, rbp_offset: int = 0, cfa_offset: int = 0) -> int:
    return (cfa_type | (rbp_offset & 0xFF) << 8 | cfa_offset << 16) << 32


_SIGNAL_WORD = _word(CfaType.SIGNAL)
_END_WORD = _word(CfaType.END)
_UNSUPPORTED_WORD = _word(CfaType.UNSUPPORTED)
_ROW = struct.Struct(ROW_FORMAT)
# The PLT's CFA expression after DW_OP_breg7 <offset>: rsp + offset, plus 8 once
# (rip & 15) reaches the threshold pushed by DW_OP_lit<threshold>.
_PLT_HEAD = bytes([0x80, 0x00, 0x3F, 0x1A])  # breg16 (rip) 0; lit15; and
_PLT_TAIL = bytes([0x2A, 0x33, 0x24, 0x22])  # ge; lit3; shl; plus
_DW_OP_BREG7 = 0x77
_DW_OP_LIT0 = 0x30


def _compile_rules(rules: tuple[Any, ...]) -> tuple[int, str]:
    """The rule word of one CFI row, and the reason when it is CFA_UNSUPPORTED."""
    cfa_reg, cfa_off, cfa_expr, rbp_k, rbp_v, ra_k, ra_v = rules
    if ra_k in (RULE_UNDEFINED, RULE_NONE):
        return _END_WORD, ""
    if ra_k != RULE_OFFSET or ra_v != -8:
        return _UNSUPPORTED_WORD, "ra_rule"
    if cfa_expr is not None:
        plt = _match_plt(cfa_expr)
        if plt is None:
            return _UNSUPPORTED_WORD, "cfa_expression"
        return _word(CfaType.PLT, *plt), ""
    if cfa_reg == RSP:
        cfa_type = CfaType.RSP
    elif cfa_reg == RBP:
        cfa_type = CfaType.RBP
    else:
        return _UNSUPPORTED_WORD, "cfa_register"
    if not 0 <= cfa_off <= 0xFFFF:
        return _UNSUPPORTED_WORD, "cfa_offset_range"
    if rbp_k in (RULE_NONE, RULE_UNDEFINED, RULE_SAME_VALUE):
        return _word(cfa_type, 0, cfa_off), ""
    if rbp_k != RULE_OFFSET:
        return _UNSUPPORTED_WORD, "rbp_rule"
    # 0 would read as "rbp unchanged"; the slot must fit the s8 in 8-byte units.
    if rbp_v % 8 or not -1024 <= rbp_v <= 1016 or rbp_v == 0:
        return _UNSUPPORTED_WORD, "rbp_offset_range"
    return _word(cfa_type, rbp_v // 8, cfa_off), ""


def _match_plt(expression: bytes) -> tuple[int, int] | None:
    """(threshold, offset) of the PLT's CFA expression, None for any other expression."""
    if len(expression) < 11 or expression[0] != _DW_OP_BREG7:
        return None
    offset = expression[1]
    if offset >= 0x40:  # a one-byte SLEB128 from 0 to 63 is all a PLT uses
        return None
    rest = expression[2:]
    threshold = rest[4] - _DW_OP_LIT0 if len(rest) == 9 else -1
    if rest[:4] != _PLT_HEAD or rest[5:] != _PLT_TAIL or not 0 <= threshold <= 15:
        return None
    return threshold, offset
