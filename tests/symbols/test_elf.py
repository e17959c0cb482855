"""agent.symbols.elf against binutils (nm, readelf) on binaries built by gcc."""

from __future__ import annotations

import os
import struct
import subprocess
import time
from pathlib import Path

import pytest

from agent.errors import SymbolError
from agent.symbols.elf import ElfInfo, read_build_id, read_elf

SHT_SYMTAB = 2
SHDR_ENTSIZE_AT, SHDR_LINK_AT, SHDR_OFFSET_AT = 56, 40, 24


def read(path: Path) -> ElfInfo:
    with open(path, "rb") as stream:
        return read_elf(stream, str(path))


def readelf_loads(path: Path) -> list[tuple[int, int, int, int]]:
    out = subprocess.run(
        ["readelf", "-lW", str(path)], check=True, capture_output=True, text=True
    ).stdout
    rows = [line.split() for line in out.splitlines()]
    # LOAD Offset VirtAddr PhysAddr FileSiz MemSiz Flg Align
    return [tuple(int(row[i], 16) for i in (1, 2, 4, 5)) for row in rows if row[:1] == ["LOAD"]]


def assert_matches_nm(info: ElfInfo, functions: dict[int, tuple[int, set[str]]]) -> None:
    assert functions, "the oracle found no functions"
    for address, (size, names) in functions.items():
        assert info.symbols.lookup(address) in names, hex(address)
        if size:
            assert info.symbols.lookup(address + size - 1) in names, hex(address + size - 1)


@pytest.mark.parametrize("name", ["pie", "nopie", "library", "with_library", "rdynamic"])
def test_every_function_nm_lists_is_found_at_its_first_and_last_byte(binaries, nm, name):
    path = getattr(binaries, name)
    assert_matches_nm(read(path), nm(path))


def test_system_libc_dynsym_matches_nm(nm):
    libc = next(
        Path(line.split()[-1])
        for line in Path("/proc/self/maps").read_text().splitlines()
        if "/libc.so" in line or "/libc-" in line
    )
    info = read(libc)
    assert_matches_nm(info, nm(libc, dynamic=True))
    assert len(info.symbols) > 1000


def test_stripped_binary_resolves_exports_from_dynsym_only(binaries, nm):
    info = read(binaries.stripped)
    full = {
        name: address for address, (_, names) in nm(binaries.rdynamic).items() for name in names
    }
    assert info.symbols.lookup(full["alpha"]) == "alpha"
    assert info.symbols.lookup(full["gamma_"]) == "gamma_"
    # beta is static: it was only in .symtab, which strip removed.
    assert info.symbols.lookup(full["beta"]) != "beta"
    assert_matches_nm(info, nm(binaries.stripped, dynamic=True))


@pytest.mark.parametrize("name", ["pie", "nopie", "library", "stripped"])
def test_build_id_matches_readelf(binaries, readelf_build_id, name):
    path = getattr(binaries, name)
    assert read(path).build_id == readelf_build_id(path)
    with open(path, "rb") as stream:
        assert read_build_id(stream) == readelf_build_id(path)


@pytest.mark.parametrize(
    ("name", "elf_type"), [("pie", "ET_DYN"), ("nopie", "ET_EXEC"), ("library", "ET_DYN")]
)
def test_type_and_load_segments_match_readelf(binaries, name, elf_type):
    info = read(getattr(binaries, name))
    assert info.elf_type == elf_type
    segments = [(s.offset, s.vaddr, s.filesz, s.memsz) for s in info.load_segments]
    assert segments == readelf_loads(getattr(binaries, name))


def test_file_offset_maps_to_vaddr_through_its_segment(binaries):
    info = read(binaries.library)
    ((offset, vaddr, filesz, _),) = [
        load
        for load, segment in zip(readelf_loads(binaries.library), info.load_segments, strict=True)
        if segment.flags & 1  # PF_X
    ]
    assert vaddr != offset, "the fixture should place text away from its file offset"
    assert info.file_offset_to_vaddr(offset) == vaddr
    assert info.file_offset_to_vaddr(offset + filesz - 1) == vaddr + filesz - 1
    assert info.file_offset_to_vaddr(10**9) is None


def test_reads_32bit_elf(binaries, nm):
    if binaries.lib32 is None:
        pytest.skip("gcc cannot build -m32 here")
    assert_matches_nm(read(binaries.lib32), nm(binaries.lib32))


# SymbolTable rules, on symbols placed by hand in tests/workloads/placed_symbols.s.


@pytest.fixture(scope="module")
def placed(binaries):
    out = subprocess.run(
        ["nm", str(binaries.assembly)], capture_output=True, text=True, check=True
    ).stdout
    addresses = {line.split()[2]: int(line.split()[0], 16) for line in out.splitlines()}
    return read(binaries.assembly).symbols, addresses


def test_global_alias_wins_over_weak_local_and_notype(placed):
    symbols, at = placed
    assert at["real_name"] == at["weak_name"] == at["local_name"]
    assert symbols.lookup(at["real_name"]) == "real_name"
    assert symbols.lookup(at["real_name"] + 7) == "real_name"


def test_sized_symbol_ends_at_its_size(placed):
    symbols, at = placed
    assert symbols.lookup(at["sized"] + 15) == "sized"
    assert symbols.lookup(at["sized"] + 16) == "label_after_sized"


def test_unsized_label_covers_up_to_next_symbol(placed):
    symbols, at = placed
    assert symbols.lookup(at["outer"] - 1) == "label_after_sized"
    assert symbols.lookup(at["outer"]) == "outer"


def test_unsized_label_stops_at_its_section_end(placed):
    symbols, at = placed
    assert at["tail_label"] - at["text_tail"] > 4, "the fixture should leave a gap"
    assert symbols.lookup(at["text_tail"] + 3) == "text_tail"
    assert symbols.lookup(at["text_tail"] + 4) is None
    assert symbols.lookup(at["tail_label"] + 3) == "tail_label"
    assert symbols.lookup(at["tail_label"] + 4) is None


def test_nested_symbol_gives_way_to_enclosing_one(placed):
    symbols, at = placed
    assert symbols.lookup(at["inner"]) == "inner"
    assert symbols.lookup(at["inner"] + 4) == "outer"
    assert symbols.lookup(at["outer"] + 31) == "outer"
    assert symbols.lookup(at["outer"] + 32) != "outer"


def test_data_and_unmapped_addresses_have_no_symbol(placed):
    symbols, at = placed
    assert symbols.lookup(at["data_label"]) is None
    assert symbols.lookup(0) is None
    assert symbols.lookup(at["sized"] - 1) is None


# Malformed inputs.


def section_headers(data: bytes) -> list[tuple[int, int]]:
    """(file offset of the header, sh_type) per section of an ELF64 LE file."""
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    entsize, count = struct.unpack_from("<HH", data, 0x3A)
    return [
        (shoff + i * entsize, struct.unpack_from("<I", data, shoff + i * entsize + 4)[0])
        for i in range(count)
    ]


def patched(source: Path, target: Path, field_at: int, fmt: str, value: int) -> Path:
    """Copy ``source`` with one field of its .symtab section header replaced."""
    data = bytearray(source.read_bytes())
    header = next(at for at, kind in section_headers(data) if kind == SHT_SYMTAB)
    struct.pack_into(fmt, data, header + field_at, value)
    target.write_bytes(data)
    return target


def assert_symbol_error(path: Path, *words: str) -> SymbolError:
    with pytest.raises(SymbolError) as caught:
        read(path)
    assert caught.value.path == str(path)
    for word in words:
        assert word in caught.value.reason
    return caught.value


def test_truncated_elf_raises_symbol_error(binaries, tmp_path):
    data = binaries.pie.read_bytes()
    (tmp_path / "half").write_bytes(data[: len(data) // 2])
    assert_symbol_error(tmp_path / "half", "past the end of the file")


def test_truncated_elf_header_raises_chained_symbol_error(binaries, tmp_path):
    (tmp_path / "head").write_bytes(binaries.pie.read_bytes()[:30])
    assert assert_symbol_error(tmp_path / "head").__cause__ is not None


@pytest.mark.parametrize("content", [b"", b"#!/bin/sh\necho not an ELF file\n" * 10])
def test_not_elf_bytes_raise_chained_symbol_error(tmp_path, content):
    (tmp_path / "script").write_bytes(content)
    assert assert_symbol_error(tmp_path / "script").__cause__ is not None


@pytest.mark.parametrize("entsize", [0, 12, 23])
def test_bogus_symtab_entsize_raises_symbol_error(binaries, tmp_path, entsize):
    path = patched(binaries.pie, tmp_path / "bogus", SHDR_ENTSIZE_AT, "<Q", entsize)
    assert_symbol_error(path, "entry size" if entsize != 12 else "sh_entsize is 12")


def test_symtab_linked_to_non_string_table_raises_symbol_error(binaries, tmp_path):
    path = patched(binaries.pie, tmp_path / "badlink", SHDR_LINK_AT, "<I", 1)
    assert_symbol_error(path, "expected SHT_STRTAB")


def test_symtab_past_end_of_file_raises_symbol_error(binaries, tmp_path):
    path = patched(binaries.pie, tmp_path / "far", SHDR_OFFSET_AT, "<Q", 1 << 40)
    assert_symbol_error(path, "past the end of the file")


def test_symbol_name_outside_string_table_raises_symbol_error(binaries, tmp_path, nm):
    data = bytearray(binaries.pie.read_bytes())
    header = next(at for at, kind in section_headers(data) if kind == SHT_SYMTAB)
    offset, size = struct.unpack_from("<QQ", data, header + SHDR_OFFSET_AT)
    alpha = next(a for a, (_, names) in nm(binaries.pie).items() if "alpha" in names)
    entry = next(
        at
        for at in range(offset, offset + size, 24)
        if struct.unpack_from("<Q", data, at + 8)[0] == alpha
    )
    struct.pack_into("<I", data, entry, 0xFFFFFFF0)
    (tmp_path / "badname").write_bytes(data)
    assert_symbol_error(tmp_path / "badname", "bad section or name")


def test_a_sparse_symtab_larger_than_the_cap_is_refused_without_reading_it(binaries, tmp_path):
    # A mapped file may be sparse: 6 GiB of .symtab that cost nothing on disk.
    path = patched(binaries.pie, tmp_path / "sparse", SHDR_OFFSET_AT, "<Q", 1 << 20)
    data = bytearray(path.read_bytes())
    header = next(at for at, kind in section_headers(data) if kind == SHT_SYMTAB)
    struct.pack_into("<Q", data, header + SHDR_OFFSET_AT + 8, 24 << 28)  # sh_size
    path.write_bytes(data)
    os.truncate(path, (1 << 20) + (24 << 28))
    started = time.monotonic()
    assert_symbol_error(path, ".symtab is 6442450944 bytes, more than the 134217728 read")
    assert time.monotonic() - started < 1
    assert os.stat(path).st_blocks * 512 < 1 << 20  # still sparse: nothing was written
