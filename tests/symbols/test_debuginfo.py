"""Separate debug files: by build id inside a private mount namespace, and by debuglink."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from agent.symbols import Symbolizer, debuginfo, read_elf
from agent.symbols.debuginfo import find_debug_file
from tests.conftest import compile_workload

FUNCTIONS = ("alpha", "beta", "gamma_")


@dataclasses.dataclass(frozen=True)
class Split:
    """A program stripped of every symbol but .dynsym, and its separate debug file."""

    stripped: Path  # no debuglink: found by build id only
    linked: Path  # with .gnu_debuglink naming debug.name
    debug: Path
    build_id: str


def run(*args: str | Path) -> str:
    return subprocess.run(list(map(str, args)), check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory, readelf_build_id) -> Split:
    if shutil.which("gcc") is None or shutil.which("objcopy") is None:
        pytest.skip("gcc and binutils are needed")
    root = tmp_path_factory.mktemp("debuginfo")
    full, debug = root / "prog_full", root / "prog.debug"
    compile_workload("debuginfo_program.c", full, "-g", "-O0", "-fno-omit-frame-pointer")
    run("objcopy", "--only-keep-debug", full, debug)
    run("strip", "--strip-all", "-o", root / "prog_stripped", full)
    run("objcopy", f"--add-gnu-debuglink={debug}", root / "prog_stripped", root / "prog_linked")
    assert ".symtab" not in run("readelf", "-S", root / "prog_linked")
    return Split(root / "prog_stripped", root / "prog_linked", debug, readelf_build_id(full))


def resolve_each(pid: int, addresses: dict[str, int]) -> tuple[list[str], dict]:
    with Symbolizer() as symbolizer:
        frames = [symbolizer.resolve_user(pid, [addresses[name]])[0] for name in FUNCTIONS]
        return [frame.name for frame in frames], symbolizer.debug_info()


def debug_file_of(info: dict) -> str:
    (entry,) = info["build_id_cache"]["entries"]
    return entry["debug_file"]


def test_debug_file_by_build_id_is_found_inside_the_process_mount_namespace(split, run_workload):
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("a private mount namespace needs root and unshare")
    relative = f".build-id/{split.build_id[:2]}/{split.build_id[2:]}.debug"
    assert not Path("/usr/lib/debug", relative).exists()
    # Only the program's namespace sees the debug file: a tmpfs over /usr/lib/debug.
    script = (
        "mount -t tmpfs tmpfs /usr/lib/debug"
        f" && mkdir -p /usr/lib/debug/.build-id/{split.build_id[:2]}"
        f" && cp {split.debug} /usr/lib/debug/{relative}"
        f' && exec {split.stripped} "$@"'
    )
    workload = run_workload(
        Path(shutil.which("unshare")), "--mount", "--propagation", "private", "sh", "-c", script
    )
    names, info = resolve_each(workload.pid, workload.addresses)
    assert names == list(FUNCTIONS)
    assert debug_file_of(info) == f"/proc/{workload.pid}/root/usr/lib/debug/{relative}"
    assert not Path("/usr/lib/debug", relative).exists()


@pytest.mark.parametrize("where", [".", ".debug"])
def test_debug_file_named_by_debuglink_beside_the_binary_is_used(
    split, run_workload, tmp_path, where
):
    program = tmp_path / "prog_linked"
    shutil.copy(split.linked, program)
    (tmp_path / where).mkdir(exist_ok=True)
    shutil.copy(split.debug, tmp_path / where / split.debug.name)
    workload = run_workload(program)
    names, info = resolve_each(workload.pid, workload.addresses)
    assert names == list(FUNCTIONS)
    expected = os.path.normpath(tmp_path / where / split.debug.name)
    assert debug_file_of(info) == f"/proc/{workload.pid}/root{expected}"


def test_debuglink_with_a_wrong_crc_is_not_used(split, run_workload, tmp_path):
    program = tmp_path / "prog_linked"
    shutil.copy(split.linked, program)
    # Still a valid ELF file with the same symbols, but not the one linked.
    (tmp_path / split.debug.name).write_bytes(split.debug.read_bytes() + b"\0" * 16)
    workload = run_workload(program)
    names, info = resolve_each(workload.pid, workload.addresses)
    maps = Path(f"/proc/{workload.pid}/maps").read_text().splitlines()
    for name, frame_name in zip(FUNCTIONS, names, strict=True):
        address = workload.addresses[name]
        start, offset = next(
            (int(line.split("-")[0], 16), int(line.split()[2], 16))
            for line in maps
            if int(line.split("-")[0], 16) <= address < int(line.split()[0].split("-")[1], 16)
        )
        assert frame_name == f"prog_linked+0x{address - start + offset:x}"
    assert debug_file_of(info) == ""


def test_debuglink_that_climbs_out_of_the_directory_is_refused(split, tmp_path):
    (tmp_path / "lib").mkdir()
    shutil.copy(split.debug, tmp_path / "prog.debug")
    with split.linked.open("rb") as stream:
        info = read_elf(stream, str(split.linked))
    assert info.debuglink == split.debug.name and not info.has_symtab
    climbing = dataclasses.replace(info, build_id="", debuglink="../prog.debug")
    assert find_debug_file(climbing, str(tmp_path / "lib" / "prog"), ["/"]) is None
    beside = dataclasses.replace(info, build_id="")
    found = find_debug_file(beside, str(tmp_path / "prog"), ["/"])
    assert found is not None
    found[1].close()
    assert found[0] == str(tmp_path / "prog.debug")


def test_a_fifo_where_a_debug_file_is_looked_for_is_skipped_without_blocking(split, tmp_path):
    with split.linked.open("rb") as stream:
        info = read_elf(stream, str(split.linked))
    root = tmp_path / "root"
    build_id_dir = root / "usr" / "lib" / "debug" / ".build-id" / info.build_id[:2]
    build_id_dir.mkdir(parents=True)
    os.mkfifo(build_id_dir / f"{info.build_id[2:]}.debug")
    (root / "app").mkdir()
    os.mkfifo(root / "app" / split.debug.name)  # the debuglink beside the binary
    started = time.monotonic()
    assert find_debug_file(info, "/app/prog", [str(root)]) is None
    assert time.monotonic() - started < 0.5


def test_a_debuglink_file_too_large_to_sum_is_not_used(split, tmp_path, monkeypatch):
    monkeypatch.setattr(debuginfo, "MAX_CRC_BYTES", split.debug.stat().st_size - 1)
    shutil.copy(split.debug, tmp_path / split.debug.name)
    with split.linked.open("rb") as stream:
        info = dataclasses.replace(read_elf(stream, str(split.linked)), build_id="")
    assert find_debug_file(info, str(tmp_path / "prog"), ["/"]) is None
    monkeypatch.setattr(debuginfo, "MAX_CRC_BYTES", split.debug.stat().st_size)
    found = find_debug_file(info, str(tmp_path / "prog"), ["/"])
    assert found is not None
    found[1].close()
