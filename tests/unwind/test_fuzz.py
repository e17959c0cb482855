"""Fuzzing the CFI reader and the table builder: whatever the bytes, only UnwindError
escapes (never IndexError, struct.error, ...), and no input makes them hang."""

from __future__ import annotations

import io

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.unwind import UnwindError, build_table
from agent.unwind.cfi import execute, parse_cfi, parse_eh_frame_hdr, read_cfi_sections
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
    try:
        fdes = parse_cfi(data, address, debug_frame=debug_frame)
        for fde in fdes:
            execute(fde)
        compile_table(fdes)
    except UnwindError:
        pass


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


@pytest.fixture(scope="module")
def small_file() -> tuple[bytes, range]:
    """The bytes of a small binary and the file range of its CFI sections."""
    data = open(SMALL_FILE, "rb").read()
    sections = read_cfi_sections(io.BytesIO(data))
    starts = [data.find(section.data) for section in sections]
    assert all(start > 0 for start in starts)
    hdr_start = min(starts) - 0x400  # .eh_frame_hdr sits just before .eh_frame
    return data, range(max(hdr_start, 0), max(starts) + max(len(s.data) for s in sections))


@settings(FUZZ, max_examples=150)
@given(edits=EDITS)
def test_mutated_file_raises_only_unwind_error(small_file, edits):
    data, span = small_file
    region = mutate(data[span.start : span.stop], [(0, p, b) for _, p, b in edits])
    try:
        build_table(io.BytesIO(data[: span.start] + region + data[span.stop :]))
    except UnwindError:
        pass
