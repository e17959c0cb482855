"""agent.symbols.resolver on live processes built by gcc, and on an injected /proc."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from agent.errors import ProcessError
from agent.symbols import Frame, Symbolizer, resolver

WORKLOAD_FUNCTIONS = ("alpha", "beta", "gamma_")
LIBRARY_FUNCTIONS = ("lib_local", "lib_work", "lib_report")


def names(frames: list[Frame]) -> list[str]:
    return [frame.name for frame in frames]


def code_mapping(pid: int, address: int) -> tuple[int, int, str]:
    """The oracle for a mapping: (start, offset, path) of the maps line holding ``address``."""
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        span, _, offset, _, _, *path = line.split()
        start, end = (int(part, 16) for part in span.split("-"))
        if start <= address < end:
            return start, int(offset, 16), path[0] if path else ""
    raise AssertionError(f"{address:#x} is not mapped in {pid}")


@pytest.fixture
def symbolizer():
    with Symbolizer() as symbolizer:
        yield symbolizer


@pytest.mark.parametrize("name", ["pie", "nopie"])
def test_runtime_addresses_resolve_to_the_functions_that_printed_them(
    binaries, run_workload, symbolizer, readelf_build_id, name
):
    path = getattr(binaries, name)
    workload = run_workload(path)
    addresses = [workload.addresses[function] for function in WORKLOAD_FUNCTIONS]
    frames = [symbolizer.resolve_user(workload.pid, [address])[0] for address in addresses]
    assert names(frames) == list(WORKLOAD_FUNCTIONS)
    for frame, address in zip(frames, addresses, strict=True):
        start, offset, mapped = code_mapping(workload.pid, address)
        assert frame.address == address
        assert frame.mapping is not None
        assert (frame.mapping.start, frame.mapping.offset, frame.mapping.path) == (
            start,
            offset,
            mapped,
        )
        assert frame.mapping.path == str(path)
        assert frame.mapping.build_id == readelf_build_id(path)
    assert symbolizer.errors == {}


def test_functions_inside_a_shared_library_resolve(binaries, run_workload, symbolizer):
    workload = run_workload(binaries.with_library)
    stack = [workload.addresses[f] for f in (*LIBRARY_FUNCTIONS, *WORKLOAD_FUNCTIONS)]
    # A one-frame stack each: every frame past the leaf is looked up a byte back.
    frames = [symbolizer.resolve_user(workload.pid, [address])[0] for address in stack]
    assert names(frames) == [*LIBRARY_FUNCTIONS, *WORKLOAD_FUNCTIONS]
    assert {frame.mapping.path for frame in frames[:3]} == {str(binaries.library)}


def test_callers_are_looked_up_one_byte_before_the_return_address(
    binaries, run_workload, symbolizer
):
    workload = run_workload(binaries.pie)
    alpha, beta = workload.addresses["alpha"], workload.addresses["beta"]
    frames = symbolizer.resolve_user(workload.pid, [alpha, beta, beta + 1])
    assert frames[0].name == "alpha"
    # A return address at the very start of beta belongs to the call before it.
    assert frames[1].name != "beta" and frames[1].address == beta
    assert frames[2].name == "beta" and frames[2].address == beta + 1


def test_stripped_binary_names_exports_and_offsets_the_rest(binaries, run_workload, symbolizer):
    workload = run_workload(binaries.stripped)
    alpha, beta = workload.addresses["alpha"], workload.addresses["beta"]
    frames = symbolizer.resolve_user(workload.pid, [alpha, beta + 1])
    start, offset, _ = code_mapping(workload.pid, beta)
    assert names(frames) == ["alpha", f"prog_stripped+0x{beta + 1 - start + offset:x}"]
    assert symbolizer.errors == {}


def test_process_that_exited_after_add_process_still_resolves(
    binaries, run_workload, symbolizer, tmp_path
):
    program = tmp_path / "short_lived"
    shutil.copy(binaries.pie, program)
    workload = run_workload(program)
    symbolizer.add_process(workload.pid)
    workload.stop()
    program.unlink()
    assert not Path(f"/proc/{workload.pid}").exists()
    stack = [workload.addresses[f] for f in WORKLOAD_FUNCTIONS]
    assert names([symbolizer.resolve_user(workload.pid, [a])[0] for a in stack]) == list(
        WORKLOAD_FUNCTIONS
    )


def test_an_exited_process_pushed_out_of_the_pid_cache_resolves_until_forgotten(
    binaries, run_workload
):
    with Symbolizer(pid_cache_size=1) as symbolizer:
        gone = run_workload(binaries.pie)
        symbolizer.add_process(gone.pid)
        gone.stop()
        alive = run_workload(binaries.pie)
        symbolizer.add_process(alive.pid)  # pushes the exited one out of the cache
        assert symbolizer.debug_info()["pid_cache"]["exited_kept"] == 1
        stack = [gone.addresses[f] for f in WORKLOAD_FUNCTIONS]
        assert names([symbolizer.resolve_user(gone.pid, [a])[0] for a in stack]) == list(
            WORKLOAD_FUNCTIONS
        )
        symbolizer.forget(gone.pid)  # its last samples are named
        assert symbolizer.debug_info()["pid_cache"]["exited_kept"] == 0
        assert symbolizer.resolve_user(gone.pid, stack[:1])[0].name.startswith("[unknown]")
        # one still running is closed when pushed out, and read again when needed
        symbolizer.add_process(run_workload(binaries.pie).pid)
        assert symbolizer.debug_info()["pid_cache"]["exited_kept"] == 0
        assert names(symbolizer.resolve_user(alive.pid, [alive.addresses["beta"]])) == ["beta"]


def test_deleted_binary_resolves_through_map_files(binaries, run_workload, symbolizer, tmp_path):
    program = tmp_path / "replaced"
    shutil.copy(binaries.pie, program)
    workload = run_workload(program)
    program.unlink()
    frame = symbolizer.resolve_user(workload.pid, [workload.addresses["gamma_"]])[0]
    assert frame.name == "gamma_"
    assert frame.mapping is not None and frame.mapping.path == str(program)


def test_library_shared_by_two_processes_is_parsed_once(binaries, run_workload, symbolizer):
    first, second = run_workload(binaries.with_library), run_workload(binaries.with_library)
    for workload in (first, second):
        frames = symbolizer.resolve_user(workload.pid, [workload.addresses["lib_work"]])
        assert names(frames) == ["lib_work"]
    assert symbolizer.tables_parsed == 1
    for workload in (first, second):
        assert names(symbolizer.resolve_user(workload.pid, [workload.addresses["beta"]])) == [
            "beta"
        ]
    assert symbolizer.tables_parsed == 2


def test_a_file_whose_table_is_kept_is_not_opened_for_the_next_process(
    binaries, run_workload, symbolizer
):
    first = run_workload(binaries.with_library)
    assert names(symbolizer.resolve_user(first.pid, [first.addresses["lib_work"]])) == ["lib_work"]
    second = run_workload(binaries.with_library)
    before = open_fds()
    symbolizer.add_process(second.pid)
    # the library's table is kept: only the files not parsed yet are opened
    assert open_fds() - before == count_code_files(second.pid) - 1
    second.stop()  # gone: named from the kept table all the same
    frames = symbolizer.resolve_user(second.pid, [second.addresses["lib_work"]])
    assert names(frames) == ["lib_work"]
    assert symbolizer.tables_parsed == 1


def count_code_files(pid: int) -> int:
    """The distinct files ``pid`` maps executable, by device and inode."""
    files = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        _, permissions, _, device, inode, *path = line.split()
        if "x" in permissions and inode != "0":
            files.add((device, inode))
    return len(files)


def test_copies_with_one_build_id_share_a_table(binaries, run_workload, symbolizer, tmp_path):
    workloads = []
    for copy in ("one", "two"):
        shutil.copy(binaries.pie, tmp_path / copy)
        workloads.append(run_workload(tmp_path / copy))
    for workload in workloads:
        assert names(symbolizer.resolve_user(workload.pid, [workload.addresses["alpha"]])) == [
            "alpha"
        ]
    assert symbolizer.tables_parsed == 1


def test_library_opened_after_add_process_is_found_by_rereading_maps(
    binaries, run_workload, symbolizer
):
    workload = run_workload(binaries.dlopener, str(binaries.library))
    symbolizer.add_process(workload.pid)
    workload.send("dlopen now")
    workload.read_until_ready()
    frames = symbolizer.resolve_user(workload.pid, [workload.addresses["lib_work"]])
    assert names(frames) == ["lib_work"]


def test_address_outside_every_mapping_is_unknown(binaries, run_workload, symbolizer):
    workload = run_workload(binaries.pie)
    frames = symbolizer.resolve_user(workload.pid, [workload.addresses["alpha"], 0x10])
    assert frames[1] == Frame(name="[unknown]+0x10", address=0x10)


def test_vanished_process_gives_unknown_frames_and_is_counted(symbolizer):
    child = subprocess.Popen(["true"])
    child.wait()
    with pytest.raises(ProcessError):
        symbolizer.add_process(child.pid)
    frames = symbolizer.resolve_user(child.pid, [0x401000, 0x401234])
    assert names(frames) == ["[unknown]+0x401000", "[unknown]+0x401234"]
    assert symbolizer.errors == {"process_unreadable": 1}


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_forget_and_close_release_every_file(binaries, run_workload):
    workload = run_workload(binaries.with_library)
    before = open_fds()
    symbolizer = Symbolizer()
    symbolizer.add_process(workload.pid)
    assert open_fds() > before
    symbolizer.forget(workload.pid)
    assert open_fds() == before
    with Symbolizer() as scoped:
        scoped.add_process(workload.pid)
        assert open_fds() > before
    assert open_fds() == before


# An injected /proc: files that cannot be parsed or opened.

FAKE_PID = 4242


@pytest.fixture
def fake_proc(tmp_path):
    """A /proc with one process mapping a corrupt file, a missing one, a vdso of one page
    (not ours: another image, so offsets) and JIT-like memory."""
    process = tmp_path / str(FAKE_PID)
    (process / "root" / "app").mkdir(parents=True)
    (process / "root" / "app" / "broken.so").write_bytes(b"\x7fELF but not really" * 8)
    (process / "maps").write_text(
        "10000-11000 r-xp 00002000 fd:01 99 /app/broken.so\n"
        "20000-21000 r-xp 00000000 fd:01 98 /app/missing.so\n"
        "30000-31000 r-xp 00000000 00:00 0 [vdso]\n"
        "40000-41000 rwxp 00000000 00:00 0\n"
    )
    return tmp_path


def test_corrupt_file_falls_back_to_offsets_and_warns_once(fake_proc, caplog):
    symbolizer = Symbolizer(proc_root=str(fake_proc))
    caplog.set_level(logging.WARNING, logger="agent.symbols.resolver")
    for _ in range(2):
        frames = symbolizer.resolve_user(FAKE_PID, [0x10010, 0x20020, 0x30030, 0x40040])
        assert names(frames) == [
            "broken.so+0x2010",
            "missing.so+0x20",
            "[vdso]+0x30",
            "[anon]+0x40",
        ]
        assert frames[0].mapping is not None and frames[0].mapping.build_id == ""
    assert symbolizer.errors == {"file_corrupt": 1, "file_unopened": 1}
    assert symbolizer.tables_parsed == 0
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 2
    assert any("/app/broken.so" in message for message in warned)


# Kernel stacks.

KALLSYMS = """\
ffffffff81000000 T _stext
ffffffff81000100 T do_work
ffffffff81000200 t helper
ffffffff81000300 T _etext
ffffffffc0a00000 t nvme_probe\t[nvme]
"""


def test_kernel_addresses_resolve_through_kallsyms_once(tmp_path):
    kallsyms = tmp_path / "kallsyms"
    kallsyms.write_text(KALLSYMS)
    with Symbolizer(kallsyms_path=str(kallsyms)) as symbolizer:
        frames = symbolizer.resolve_kernel(
            [0xFFFFFFFF81000110, 0xFFFFFFFF81000201, 0xFFFFFFFF81000200, 0xFFFFFFFFC0A00001, 0x1234]
        )
        assert names(frames) == [
            "do_work",
            "helper",
            "do_work",
            "nvme_probe",
            "[kernel.kallsyms]+0x1234",
        ]
        assert all(frame.mapping is None for frame in frames)
        kallsyms.write_text(KALLSYMS.replace("do_work", "renamed"))
        assert names(symbolizer.resolve_kernel([0xFFFFFFFF81000110])) == ["do_work"]


def test_unreadable_kallsyms_gives_addresses_and_is_counted(tmp_path, caplog):
    with Symbolizer(kallsyms_path=str(tmp_path / "absent")) as symbolizer:
        for _ in range(2):
            frames = symbolizer.resolve_kernel([0xFFFFFFFF81000110])
            assert names(frames) == ["[kernel.kallsyms]+0xffffffff81000110"]
        assert symbolizer.errors == {"kallsyms_unreadable": 1}
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


def test_real_kernel_symbol_resolves(symbolizer):
    if os.geteuid() != 0:
        pytest.skip("kallsyms addresses are hidden from non-root")
    line = next(
        line
        for line in Path("/proc/kallsyms").read_text().splitlines()
        if line.endswith(" T schedule")
    )
    address = int(line.split()[0], 16)
    assert names(symbolizer.resolve_kernel([address + 1, address + 2])) == ["schedule", "schedule"]


def test_unmapped_addresses_reread_the_maps_at_most_once_a_second(
    binaries, run_workload, symbolizer, monkeypatch
):
    # A stack walked without frame pointers is full of addresses in no file:
    # each must not cost a read of /proc/<pid>/maps.
    workload = run_workload(binaries.pie)
    symbolizer.add_process(workload.pid)
    reads = []
    real_read_maps = resolver.read_maps
    monkeypatch.setattr(
        resolver, "read_maps", lambda *args: reads.append(args) or real_read_maps(*args)
    )
    for garbage in range(0x10, 0x10 + 50):
        frames = symbolizer.resolve_user(workload.pid, [workload.addresses["alpha"], garbage])
        assert names(frames)[1] == f"[unknown]+{garbage:#x}"
    assert len(reads) == 1
