"""Fuzzing the CFI reader and the table builder: whatever the bytes, only UnwindError
escapes (never IndexError, struct.error, ...), and no input makes them hang."""

from __future__ import annotations

import io
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.unwind import ROW_FORMAT, CfaType, UnwindError, build_table
from agent.unwind.cfi import execute, parse_cfi, parse_eh_frame_hdr
from agent.unwind.sections import read_cfi_sections
from agent.unwind.table import compile_table

SMALL_FILE = "/usr/bin/gzip"
FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _seed() -> tuple[bytes, int]:
    """The first entries of python3.11's .eh_frame (CIEs, the PLT's FDE, plain FDEs)."""
    section = next(
        s for s in read_cfi_sections(open("/usr/bin/python3.11", "rb")) if s.name == ".eh_frame"
    )
    fdes = parse_cfi(section.data, section.address)
    return section.data[: fdes[40].offset], section.address


SEED, SEED_ADDRESS = _seed()


def exercise(data: bytes, address: int, debug_frame: bool = False) -> None:
    """Read, run and compile; a table that comes out must keep the row contract."""
    try:
        fdes = parse_cfi(data, address, debug_frame=debug_frame)
        for fde in fdes:
            execute(fde)
        table = compile_table(fdes)
    except UnwindError:
        return
    check_rows(table)


def check_rows(table) -> None:
    rows = list(struct.iter_unpack(ROW_FORMAT, table.rows))
    assert all(a[0] < b[0] for a, b in zip(rows, rows[1:], strict=False))
    assert all(a[1:] != b[1:] for a, b in zip(rows, rows[1:], strict=False))
    assert all(0 <= row[1] <= max(CfaType) for row in rows)


def mutate(base: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    """Apply (kind, position, byte) edits: 0 overwrite, 1 insert, 2 delete, 3 truncate."""
    data = bytearray(base)
    for kind, position, byte in edits:
        if not data:
            break
        at = position % len(data)
        if kind == 0:
            data[at] = byte
        elif kind == 1:
            data.insert(at, byte)
        elif kind == 2:
            del data[at]
        else:
            del data[at:]
    return bytes(data)


EDITS = st.lists(
    st.tuples(st.integers(0, 3), st.integers(0, 1 << 20), st.integers(0, 255)),
    min_size=1,
    max_size=8,
)


@FUZZ
@given(st.binary(max_size=600), st.booleans())
def test_random_bytes_raise_only_unwind_error(data, debug_frame):
    exercise(data, 0x1000, debug_frame)


@FUZZ
@given(EDITS, st.booleans())
def test_mutated_real_cfi_raises_only_unwind_error(edits, debug_frame):
    exercise(mutate(SEED, edits), SEED_ADDRESS, debug_frame)


@FUZZ
@given(st.binary(max_size=64))
def test_random_eh_frame_hdr_raises_only_unwind_error(data):
    try:
        parse_eh_frame_hdr(data, 0x1000)
    except UnwindError:
        pass


class SmallFile:
    """The bytes of a small binary and the file range of its CFI sections."""

    def __init__(self, path: str) -> None:
        self.data = open(path, "rb").read()
        sections = read_cfi_sections(io.BytesIO(self.data))
        starts = [self.data.find(section.data) for section in sections]
        assert all(start > 0 for start in starts)
        # .eh_frame_hdr sits just before .eh_frame
        self.span = range(
            max(min(starts) - 0x400, 0), max(starts) + max(len(s.data) for s in sections)
        )

    def __repr__(self) -> str:
        return f"SmallFile({SMALL_FILE!r})"


@pytest.fixture(scope="module")
def small_file() -> SmallFile:
    return SmallFile(SMALL_FILE)


@settings(FUZZ, max_examples=150)
@given(edits=EDITS)
def test_mutated_file_raises_only_unwind_error(small_file, edits):
    data, span = small_file.data, small_file.span
    region = mutate(data[span.start : span.stop], [(0, p, b) for _, p, b in edits])
    try:
        table = build_table(io.BytesIO(data[: span.start] + region + data[span.stop :]))
    except UnwindError:
        return
    check_rows(table)
