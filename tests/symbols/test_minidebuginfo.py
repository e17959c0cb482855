"""MiniDebugInfo built as Fedora's find-debuginfo builds it, read by a live Symbolizer."""

from __future__ import annotations

import dataclasses
import lzma
import shutil
import subprocess
from pathlib import Path

import pytest

from agent.errors import SymbolError
from agent.symbols import Symbolizer, read_elf
from agent.symbols.minidebuginfo import parse_minidebuginfo, read_minidebuginfo
from tests.conftest import compile_workload

FUNCTIONS = ("alpha", "beta", "gamma_", "delta")


@dataclasses.dataclass(frozen=True)
class Builds:
    """A stripped program with MiniDebugInfo, one with a corrupt section, and plain stripped."""

    mini: Path
    corrupt: Path
    stripped: Path
    mini_xz: Path


def run(*args: str | Path) -> str:
    return subprocess.run(list(map(str, args)), check=True, capture_output=True, text=True).stdout


def defined_names(*nm_args: str | Path) -> set[str]:
    return {
        line.split()[0]
        for line in run("nm", "--format=posix", "--defined-only", *nm_args).splitlines()
    }


def add_minidebuginfo(binary: Path, root: Path) -> Path:
    """find-debuginfo's add_minidebug: function symbols not in .dynsym, xz'd into a section."""
    debug = root / "prog.debug"
    run("objcopy", "--only-keep-debug", binary, debug)
    functions = {
        line.split()[0]
        for line in run("nm", "--format=posix", "--defined-only", debug).splitlines()
        if line.split()[1] in ("T", "t", "D")
    }
    keep = root / "keep_symbols"
    keep.write_text("\n".join(sorted(functions - defined_names("-D", binary))) + "\n")
    mini = root / "mini_debuginfo"
    run(
        "objcopy",
        "-S",
        "--remove-section",
        ".gdb_index",
        "--remove-section",
        ".comment",
        f"--keep-symbols={keep}",
        debug,
        mini,
    )
    run("xz", "-f", mini)
    return root / "mini_debuginfo.xz"


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> Builds:
    if not all(shutil.which(tool) for tool in ("gcc", "objcopy", "nm", "xz")):
        pytest.skip("gcc, binutils and xz-utils are needed")
    root = tmp_path_factory.mktemp("minidebuginfo")
    compile_workload(
        "minidebuginfo_program.c", root / "prog", "-O0", "-g", "-fno-omit-frame-pointer"
    )
    mini_xz = add_minidebuginfo(root / "prog", root)
    stripped = root / "prog_stripped"
    run("strip", "--strip-all", "-o", stripped, root / "prog")
    (root / "bad.xz").write_bytes(b"\xfd7zXZ\0 this is not xz data")
    paths = {}
    for name, section in (("prog_mini", mini_xz), ("prog_corrupt", root / "bad.xz")):
        paths[name] = root / name
        run("objcopy", "--add-section", f".gnu_debugdata={section}", stripped, paths[name])
    return Builds(paths["prog_mini"], paths["prog_corrupt"], stripped, mini_xz)


def resolve(run_workload, path: Path) -> tuple[dict[str, str], Symbolizer]:
    workload = run_workload(path)
    symbolizer = Symbolizer()
    # Each as a leaf: callers' addresses are looked up one byte back, as return addresses.
    names = {
        f: symbolizer.resolve_user(workload.pid, [workload.addresses[f]])[0].name for f in FUNCTIONS
    }
    return names, symbolizer


def test_the_section_holds_the_local_functions_missing_from_dynsym(builds: Builds) -> None:
    with open(builds.mini, "rb") as stream:
        info = read_elf(stream)
        assert not info.has_symtab
        completed = read_minidebuginfo(info, stream)
    assert completed.debug_file == f"{builds.mini}[.gnu_debugdata]"
    assert len(completed.symbols) > len(info.symbols)


def test_static_functions_are_named_through_minidebuginfo(builds: Builds, run_workload) -> None:
    names, symbolizer = resolve(run_workload, builds.mini)
    assert names == {f: f for f in FUNCTIONS}
    assert symbolizer.errors == {}


def test_without_the_section_the_same_functions_fall_back(builds: Builds, run_workload) -> None:
    names, _ = resolve(run_workload, builds.stripped)
    assert all(name.startswith("prog_stripped+0x") for name in names.values())


def test_corrupt_section_is_counted_and_falls_back(builds: Builds, run_workload, caplog) -> None:
    names, symbolizer = resolve(run_workload, builds.corrupt)
    assert all(name.startswith("prog_corrupt+0x") for name in names.values())
    assert symbolizer.errors == {"minidebuginfo_corrupt": 1}
    assert "not valid xz data" in caplog.text


def test_a_file_without_the_section_is_returned_as_it_is(builds: Builds) -> None:
    with open(builds.stripped, "rb") as stream:
        info = read_elf(stream)
        assert read_minidebuginfo(info, stream) is info


def test_decompression_past_the_limit_is_refused() -> None:
    bomb = lzma.compress(b"\0" * 4096, format=lzma.FORMAT_XZ)
    with pytest.raises(SymbolError, match="more than 1024 bytes"):
        parse_minidebuginfo(bomb, "bomb", limit=1024)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (lzma.compress(b"not an elf file", format=lzma.FORMAT_XZ), "not an ELF file"),
        (b"plain bytes, not xz at all", "not valid xz data"),
    ],
)
def test_bad_contents_raise_symbol_error(data: bytes, message: str) -> None:
    with pytest.raises(SymbolError, match=message):
        parse_minidebuginfo(data, "bad")


def test_truncated_xz_raises_symbol_error(builds: Builds) -> None:
    data = builds.mini_xz.read_bytes()
    with pytest.raises(SymbolError, match="truncated"):
        parse_minidebuginfo(data[: len(data) // 2], "cut")
