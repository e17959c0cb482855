"""Hypothesis fuzzing of every parser of untrusted input, for a bounded number of examples.

Each parser may raise only the error its docstring documents; anything else
escaping would stop symbolization of every process, not just the bad file.
"""

from __future__ import annotations

import io
import lzma
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from agent.discovery.containers import parse_cgroup
from agent.errors import SymbolError
from agent.symbols import read_build_id, read_elf
from agent.symbols.gopclntab import parse_gopclntab
from agent.symbols.kallsyms import read_kallsyms
from agent.symbols.minidebuginfo import parse_minidebuginfo
from agent.symbols.perfmap import parse_perf_map
from agent.symbols.procmaps import parse_maps
from tests.symbols.test_gopclntab import LAYOUTS, synthesize

BOUNDED = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Values that make counts and offsets wrap, overflow or point just past the end.
EDGES = [0, 1, 0x7F, 0x80, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 2**63, 2**64 - 1]


def elf_regions(data: bytes) -> list[tuple[int, int]]:
    """ELF header, program headers and section headers of a 64-bit little-endian file."""
    phoff, shoff = struct.unpack_from("<QQ", data, 0x20)
    phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", data, 0x36)
    return [(0, 64), (phoff, phoff + phnum * phentsize), (shoff, shoff + shnum * shentsize)]


@st.composite
def mutated(draw: st.DrawFn, original: bytes, regions: list[tuple[int, int]]) -> bytes:
    """``original`` with a few fields of its headers overwritten, then maybe truncated."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 6))):
        start, end = draw(st.sampled_from(regions))
        width = draw(st.sampled_from([1, 2, 4, 8]))
        at = draw(st.integers(start, max(start, end - width)))
        limit = 2 ** (8 * width) - 1
        value = draw(st.one_of(st.sampled_from([e & limit for e in EDGES]), st.integers(0, limit)))
        data[at : at + width] = value.to_bytes(width, "little")
    if draw(st.booleans()):
        del data[draw(st.integers(0, len(data))) :]
    return bytes(data)


@pytest.fixture(scope="module")
def small_elf(binaries) -> bytes:
    return Path(binaries.library).read_bytes()


def fuzz_elf(data: bytes) -> None:
    try:
        info = read_elf(io.BytesIO(data), "fuzzed")
        read_build_id(io.BytesIO(data), "fuzzed")
    except SymbolError:
        return
    for segment in info.load_segments:
        info.symbols.lookup(segment.vaddr)


def test_read_elf_on_mutated_headers_raises_only_symbol_error(small_elf: bytes) -> None:
    @BOUNDED
    @given(mutated(small_elf, elf_regions(small_elf)))
    def check(data: bytes) -> None:
        fuzz_elf(data)

    check()


def test_minidebuginfo_of_mutated_elf_raises_only_symbol_error(small_elf: bytes) -> None:
    @settings(BOUNDED, max_examples=100)
    @given(mutated(small_elf, elf_regions(small_elf)), st.booleans())
    def check(data: bytes, cut: bool) -> None:
        packed = lzma.compress(data, format=lzma.FORMAT_XZ, preset=0)
        try:
            parse_minidebuginfo(packed[: len(packed) // 2] if cut else packed, "fuzzed")
        except SymbolError:
            pass

    check()


PCLNTABS = [
    synthesize(magic, ptr_size=p, order=o) for magic in LAYOUTS for p in (4, 8) for o in "<>"
]


@BOUNDED
@given(
    st.sampled_from(PCLNTABS).flatmap(lambda t: mutated(t, [(0, 8 + 8 * 8), (0, len(t))])),
    st.integers(0, 2**64 - 1),
)
def test_parse_gopclntab_on_mutated_tables_raises_only_symbol_error(data, text_start) -> None:
    try:
        symbols = parse_gopclntab(data, text_start, "fuzzed")
    except SymbolError:
        return
    for address in (0, text_start, 0x401000, 0x401100, 2**64 - 1):
        symbols.lookup(address)


def lines(
    alphabet: str, tokens: tuple[str, ...] = (), max_size: int = 20
) -> st.SearchStrategy[str]:
    """Lines of characters from ``alphabet`` and whole ``tokens``, or any text at all."""
    piece = st.one_of(st.text(alphabet=alphabet, max_size=20), st.sampled_from(tokens or ("",)))
    line = st.lists(piece, max_size=8).map("".join)
    structured = st.lists(line, max_size=max_size).map("\n".join)
    return st.one_of(structured, st.text(max_size=400))


HEX64 = "0123456789abcdef" * 4
CGROUP_TOKENS = (
    "0::/",
    "1:cpu,cpuacct:/",
    "docker-",
    "crio-conmon-",
    "cri-containerd:",
    ".scope",
    HEX64,
    "/kubepods/pod0a1b2c3d_1234_5678_9abc_0123456789ab/",
    "libpod-",
)


@BOUNDED
@given(lines("0123456789abcdefx -_.[]()<>\t\r"), st.integers(1, 400))
# A start past 64 bits must be malformed, not overflow the array of starts.
@example("10000000000000000 1 too_wide", 400)
def test_parse_perf_map_raises_only_symbol_error(text: str, max_bytes: int) -> None:
    try:
        symbols, _ = parse_perf_map(io.BytesIO(text.encode()), max_bytes)
    except SymbolError:
        return
    records = list(symbols.records())
    assert all(size > 0 and start + size < 2**64 for start, size, _ in records)
    assert [start for start, _, _ in records] == sorted({start for start, _, _ in records})


@BOUNDED
@given(lines("0123456789abcdef tTwWdD_[]\t", ("ffffffff81000000 T ", " [mod]")))
# Found by this test: addresses beyond 64 bits overflowed KernelSymbols' array.
@example("10000000000000000 T too_wide")
@example("-1 T negative")
def test_read_kallsyms_raises_only_symbol_error(text: str) -> None:
    try:
        symbols = read_kallsyms(io.StringIO(text), "fuzzed")
    except SymbolError:
        return
    symbols.lookup(0xFFFFFFFF81000000)


@BOUNDED
@given(lines("0123456789abcdef-: rwxps/\t", (" (deleted)", "7f00-7f10 r-xp ", "fd:01 ")))
def test_parse_maps_raises_only_symbol_error(text: str) -> None:
    try:
        parse_maps(text, "fuzzed")
    except SymbolError:
        pass


@BOUNDED
@given(lines("0123456789abcdef:/-_.\r", CGROUP_TOKENS, max_size=8))
def test_parse_cgroup_never_raises(text: str) -> None:
    info = parse_cgroup(text)
    assert info.container_id is None or len(info.container_id) == 64
