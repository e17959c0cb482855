"""agent.symbols.gopclntab against `go tool nm` on tests/workloads/go/main.go, plus
synthetic pcHeaders for the layouts the installed Go does not write."""

from __future__ import annotations

import io
import os
import shutil
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.errors import SymbolError
from agent.symbols.gopclntab import GoSymbols, parse_gopclntab, read_gopclntab

WORKLOAD = Path(__file__).parents[1] / "workloads" / "go" / "main.go"
MAGIC_12, MAGIC_116, MAGIC_118, MAGIC_120 = 0xFFFFFFFB, 0xFFFFFFFA, 0xFFFFFFF0, 0xFFFFFFF1
SHDR_SIZE_AT = 32  # sh_size in an Elf64_Shdr


@dataclass(frozen=True)
class GoBinaries:
    """Builds of the Go workload; the external-linker ones are None without gcc."""

    root: Path
    version: str
    plain: Path  # .gopclntab section and .symtab
    stripped: Path  # -ldflags=-s -w: .gopclntab section, no .symtab
    pie: Path  # internal-linked PIE: .data.rel.ro.gopclntab section
    ext: Path | None  # external linker: runtime.text is after C code in .text
    ext_pie: Path | None  # external PIE: table inside .data.rel.ro, found by symbols
    ext_pie_stripped: Path | None  # strip --strip-all of ext_pie: found by magic search


def go(root: Path, *args: str | Path) -> str:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(root),
        "GOCACHE": str(root / "cache"),
        "GOPATH": str(root / "gopath"),
        "GOFLAGS": "-mod=mod",
        "GOPROXY": "off",
        "CGO_ENABLED": "0",
    }
    return subprocess.run(
        ["go", *map(str, args)], check=True, capture_output=True, text=True, cwd=root, env=env
    ).stdout


@pytest.fixture(scope="session")
def go_binaries(tmp_path_factory: pytest.TempPathFactory) -> GoBinaries:
    if shutil.which("go") is None:
        pytest.skip("go is not installed")
    root = tmp_path_factory.mktemp("go")
    shutil.copy(WORKLOAD, root / "main.go")

    def build(name: str, *flags: str) -> Path:
        go(root, "build", *flags, "-o", root / name, "main.go")
        return root / name

    ext = ext_pie = ext_pie_stripped = None
    if shutil.which("gcc") and shutil.which("strip"):
        ext = build("ext", "-ldflags=-linkmode=external")
        ext_pie = build("ext_pie", "-buildmode=pie", "-ldflags=-linkmode=external")
        ext_pie_stripped = root / "ext_pie_stripped"
        subprocess.run(["strip", "--strip-all", "-o", ext_pie_stripped, ext_pie], check=True)
    return GoBinaries(
        root=root,
        version=go(root, "env", "GOVERSION").strip(),
        plain=build("plain"),
        stripped=build("stripped", "-ldflags=-s -w"),
        pie=build("pie", "-buildmode=pie"),
        ext=ext,
        ext_pie=ext_pie,
        ext_pie_stripped=ext_pie_stripped,
    )


def binary(go_binaries: GoBinaries, name: str) -> Path:
    path = getattr(go_binaries, name)
    if path is None:
        pytest.skip("gcc and strip are needed for external linking")
    return path


def go_nm(go_binaries: GoBinaries, path: Path) -> dict[int, tuple[int, str]]:
    """The oracle: entry -> (size, runtime name) of each Go function `go tool nm` lists.

    Only text between runtime.text and runtime.etext is Go's (external linking
    adds C). The runtime name drops the ELF-only ".abi0" suffix (cmd/link lib.go)
    and shows the outermost [...] of a name as "[...]" (cmd/link pcln.go nameParts).
    """
    out = go(go_binaries.root, "tool", "nm", "-size", path)
    rows = [line.split(None, 3) for line in out.splitlines()]
    text = {row[3]: int(row[0], 16) for row in rows if len(row) == 4 and row[2] in "Tt"}
    found = {}
    for address, size, kind, name in (row for row in rows if len(row) == 4):
        if kind not in "Tt" or not text["runtime.text"] <= int(address, 16) < text["runtime.etext"]:
            continue
        if name == "runtime.text":
            continue
        name = name.removesuffix(".abi0")
        if "[" in name and "]" in name[name.index("[") :]:
            name = name[: name.index("[")] + "[...]" + name[name.rindex("]") + 1 :]
        found[int(address, 16)] = (int(size), name)
    return found


def read(path: Path) -> GoSymbols | None:
    with open(path, "rb") as stream:
        return read_gopclntab(stream, str(path))


def assert_matches(symbols: GoSymbols | None, functions: dict[int, tuple[int, str]]) -> None:
    assert symbols is not None
    assert len(functions) > 1000, "the oracle found too few functions"
    for entry, (size, name) in functions.items():
        assert symbols.lookup(entry) == name, hex(entry)
        if size > 1:
            assert symbols.lookup(entry + 1) == name, hex(entry + 1)


@pytest.mark.parametrize("name", ["plain", "pie", "ext", "ext_pie"])
def test_every_go_function_nm_lists_is_found_at_its_entry_and_next_byte(go_binaries, name):
    path = binary(go_binaries, name)
    functions = go_nm(go_binaries, path)
    symbols = read(path)
    assert_matches(symbols, functions)
    assert len(symbols) == len(functions)


@pytest.mark.parametrize(
    ("name", "oracle"), [("stripped", "plain"), ("ext_pie_stripped", "ext_pie")]
)
def test_stripped_build_resolves_the_same_names_at_the_same_addresses(go_binaries, name, oracle):
    path = binary(go_binaries, name)
    out = subprocess.run(["readelf", "-SW", path], check=True, capture_output=True, text=True)
    assert ".symtab" not in out.stdout
    assert_matches(read(path), go_nm(go_binaries, binary(go_binaries, oracle)))


def test_workload_functions_method_and_closure_have_their_go_names(go_binaries):
    symbols = read(go_binaries.plain)
    by_name = {name: entry for entry, (_, name) in go_nm(go_binaries, go_binaries.plain).items()}
    for name in ("main.main", "main.hotLoop", "main.(*worker).step", "main.main.func1"):
        assert symbols.lookup(by_name[name]) == name


def test_layout_follows_the_go_version_and_addresses_outside_text_are_none(go_binaries):
    symbols = read(go_binaries.plain)
    minor = int(go_binaries.version.removeprefix("go").split(".")[1])
    assert symbols.layout == ("1.18" if minor < 20 else "1.20")
    out = go(go_binaries.root, "tool", "nm", go_binaries.plain)
    markers = {row[2]: int(row[0], 16) for row in map(str.split, out.splitlines()) if len(row) == 3}
    assert symbols.lookup(markers["runtime.text"] - 1) is None
    assert symbols.lookup(markers["runtime.etext"]) is None
    assert symbols.lookup(markers["runtime.etext"] - 1) is not None
    assert symbols.lookup(0) is None


def test_files_without_a_go_table_give_none(tmp_path):
    assert read_gopclntab(io.BytesIO(b""), "empty") is None
    assert read_gopclntab(io.BytesIO(b"#!/bin/sh\nexit 0\n"), "script") is None
    assert read(Path(sys.executable).resolve()) is None


# Corrupt inputs: each gives SymbolError (table located by section or symbols)
# or None (nothing that parses found by magic search), never another exception.


def section(path: Path, name: str) -> tuple[int, int, int]:
    """(file offset, size, section header index) of section ``name``, from readelf."""
    out = subprocess.run(["readelf", "-SW", path], check=True, capture_output=True, text=True)
    for line in out.stdout.splitlines():
        fields = line.replace("[ ", "[").split()
        if len(fields) > 5 and fields[1] == name:
            return int(fields[4], 16), int(fields[5], 16), int(fields[0].strip("[]"))
    raise AssertionError(f"no section {name} in {path}")


def patched(path: Path, tmp_path: Path, at: int, data: bytes) -> Path:
    raw = bytearray(path.read_bytes())
    raw[at : at + len(data)] = data
    out = tmp_path / f"{path.name}.patched"
    out.write_bytes(raw)
    return out


def test_truncated_file_cutting_the_section_raises(go_binaries, tmp_path):
    offset, size, _ = section(go_binaries.plain, ".gopclntab")
    cut = tmp_path / "cut"
    cut.write_bytes(go_binaries.plain.read_bytes()[: offset + size // 2])
    with pytest.raises(SymbolError) as caught:
        read(cut)
    assert caught.value.path == str(cut)


def test_section_shrunk_below_its_function_table_raises(go_binaries, tmp_path):
    _, _, index = section(go_binaries.plain, ".gopclntab")
    shoff = struct.unpack_from("<Q", go_binaries.plain.read_bytes(), 0x28)[0]
    path = patched(
        go_binaries.plain, tmp_path, shoff + index * 64 + SHDR_SIZE_AT, struct.pack("<Q", 0x100)
    )
    with pytest.raises(SymbolError, match="past the end"):
        read(path)


def test_bad_magic_in_the_section_raises(go_binaries, tmp_path):
    offset, _, _ = section(go_binaries.plain, ".gopclntab")
    with pytest.raises(SymbolError, match="magic"):
        read(patched(go_binaries.plain, tmp_path, offset, b"\x12\x34\x56\x78"))


def test_function_count_past_the_end_raises(go_binaries, tmp_path):
    offset, _, _ = section(go_binaries.plain, ".gopclntab")
    with pytest.raises(SymbolError, match="function table"):
        read(patched(go_binaries.plain, tmp_path, offset + 8, struct.pack("<Q", 1 << 40)))


def test_bad_magic_found_only_by_search_gives_none(go_binaries, tmp_path):
    path = binary(go_binaries, "ext_pie_stripped")
    raw = path.read_bytes()
    # The whole prefix: the runtime's code also holds the magic as a constant.
    prefixes = [struct.pack("<I", magic) + b"\0\0\x01\x08" for magic in (MAGIC_118, MAGIC_120)]
    at = max(raw.find(prefix) for prefix in prefixes)
    assert at > 0 and raw.count(raw[at : at + 8]) == 1
    assert read(patched(path, tmp_path, at, b"\0\0\0\0")) is None


def test_every_header_byte_corrupted_gives_symbols_or_symbol_error(go_binaries, tmp_path):
    offset, _, _ = section(go_binaries.plain, ".gopclntab")
    raw = go_binaries.plain.read_bytes()
    for at in range(offset, offset + 72):
        for value in (0x00, 0xFF):
            data = bytearray(raw)
            data[at] = value
            try:
                symbols = read_gopclntab(io.BytesIO(bytes(data)), "fuzz")
            except SymbolError:
                continue
            for probe in (0x401000, 0x450000, 0x480000):
                symbols.lookup(probe)


# Synthetic tables: one per layout, byte order and pointer size.

LAYOUTS = {MAGIC_12: "1.2", MAGIC_116: "1.16", MAGIC_118: "1.18", MAGIC_120: "1.20"}
FUNCTIONS = [(0x401000, "main.first"), (0x401040, "main.(*t).second"), (0x401100, "main.third")]
END = 0x401180


def synthesize(
    magic: int,
    functions: list[tuple[int, str]] = FUNCTIONS,
    end: int = END,
    *,
    ptr_size: int = 8,
    order: str = "<",
    text_start: int = 0x401000,
    header_text: bool = True,
) -> bytes:
    """A minimal pclntab: header, name table, functab and _func {entry, nameoff}."""
    version = LAYOUTS[magic]
    relative = version in ("1.18", "1.20")
    words = {"1.2": 1, "1.16": 7, "1.18": 8, "1.20": 8}[version]
    word = "Q" if ptr_size == 8 else "I"
    entry = "I" if relative else word
    field = struct.calcsize(entry)
    header_size = 8 + words * ptr_size
    names, name_offsets = b"", []
    for _, name in functions:
        name_offsets.append(len(names))
        names += name.encode() + b"\0"
    n = len(functions)
    functab_size = (2 * n + 1) * field
    record = field + 4
    pcs = [pc - text_start if relative else pc for pc, _ in functions] + [
        end - text_start if relative else end
    ]
    if version == "1.2":
        functab, names_at = header_size, header_size + functab_size
        funcs_at = names_at + len(names)
        func_offsets = [funcs_at + i * record for i in range(n)]  # from the table start
        name_offsets = [names_at + offset for offset in name_offsets]
        header = [n]
    else:
        names_at, functab = header_size, header_size + len(names)
        func_offsets = [functab_size + i * record for i in range(n)]  # from the functab
        cu = names_at + len(names)
        header = [n, 0, names_at, cu, functab, functab, functab]
        if relative:
            header.insert(2, text_start if header_text else 0)
    table = [value for pair in zip(pcs, func_offsets, strict=False) for value in pair] + [pcs[-1]]
    records = b"".join(struct.pack(f"{order}{entry}i", pcs[i], name_offsets[i]) for i in range(n))
    out = struct.pack(f"{order}I", magic) + bytes([0, 0, 1, ptr_size])
    out += struct.pack(f"{order}{words}{word}", *header)
    if version == "1.2":
        out += struct.pack(f"{order}{len(table)}{entry}", *table) + names + records
    else:
        out += names + struct.pack(f"{order}{len(table)}{entry}", *table) + records
    return out


def assert_synthetic(symbols: GoSymbols, version: str) -> None:
    assert symbols.layout == version
    assert len(symbols) == len(FUNCTIONS)
    for (pc, name), (next_pc, _) in zip(FUNCTIONS, FUNCTIONS[1:] + [(END, "")], strict=True):
        assert symbols.lookup(pc) == name
        assert symbols.lookup(next_pc - 1) == name
    assert symbols.lookup(FUNCTIONS[0][0] - 1) is None
    assert symbols.lookup(END) is None


@pytest.mark.parametrize("magic", list(LAYOUTS), ids=list(LAYOUTS.values()))
@pytest.mark.parametrize(("order", "ptr_size"), [("<", 8), (">", 8), ("<", 4), (">", 4)])
def test_each_magic_selects_its_layout(magic, order, ptr_size):
    data = synthesize(magic, order=order, ptr_size=ptr_size)
    assert_synthetic(parse_gopclntab(data, path="synthetic"), LAYOUTS[magic])


@pytest.mark.parametrize("magic", [MAGIC_118, MAGIC_120])
def test_relative_layouts_use_the_given_text_start_when_the_header_has_none(magic):
    data = synthesize(magic, header_text=False)
    assert_synthetic(parse_gopclntab(data, text_start=0x401000), LAYOUTS[magic])
    # The header's textStart wins when it is set.
    assert parse_gopclntab(synthesize(magic), text_start=0x999000).lookup(0x401000) == "main.first"


@pytest.mark.parametrize("magic", list(LAYOUTS), ids=list(LAYOUTS.values()))
def test_every_truncation_raises_symbol_error(magic):
    data = synthesize(magic)
    for size in range(len(data)):
        try:
            symbols = parse_gopclntab(data[:size])
        except SymbolError:
            continue
        # Only the tail of the last name can go missing without a bad offset.
        assert symbols.lookup(FUNCTIONS[0][0]) in (None, "main.first")


@pytest.mark.parametrize(
    ("magic", "word", "what"),
    [
        (MAGIC_116, 2, "name"),  # funcnameOffset
        (MAGIC_116, 6, "function table"),  # pclnOffset
        (MAGIC_118, 3, "name"),
        (MAGIC_118, 7, "function table"),
        (MAGIC_120, 7, "function table"),
        (MAGIC_12, 0, "function table"),  # nfunc
        (MAGIC_120, 0, "function table"),
    ],
)
def test_header_offsets_past_the_end_raise(magic, word, what):
    data = bytearray(synthesize(magic))
    struct.pack_into("<Q", data, 8 + word * 8, len(data) + 1)
    with pytest.raises(SymbolError, match=what):
        parse_gopclntab(bytes(data), path="synthetic")


@pytest.mark.parametrize(
    ("at", "value", "match"),
    [(0, 0x00, "magic"), (4, 0x01, "bad header"), (6, 0x03, "quantum"), (7, 0x02, "pointer")],
)
def test_bad_magic_padding_quantum_or_pointer_size_raise(at, value, match):
    data = bytearray(synthesize(MAGIC_120))
    data[at] = value
    with pytest.raises(SymbolError, match=match):
        parse_gopclntab(bytes(data))


def test_unsorted_entries_raise():
    swapped = [FUNCTIONS[1], FUNCTIONS[0], FUNCTIONS[2]]
    with pytest.raises(SymbolError, match="sorted"):
        parse_gopclntab(synthesize(MAGIC_116, swapped))


def test_name_offset_outside_the_name_table_raises():
    data = bytearray(synthesize(MAGIC_118))
    struct.pack_into("<i", data, len(data) - 4, 1 << 20)  # the last _func's nameoff
    with pytest.raises(SymbolError, match="name"):
        parse_gopclntab(bytes(data))
