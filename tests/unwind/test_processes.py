"""NativeUnwinder against real processes, with the kernel's maps recorded in
memory: tables shared per file, mappings followed, room made by eviction."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from agent.symbols import Symbolizer
from agent.symbols.elf import read_build_id, read_elf
from agent.symbols.procmaps import read_maps
from agent.unwind import NativeUnwinder, TableCache, build_table
from agent.unwind.table import ROW_SIZE


class RecordingSession:
    """The session's unwind surface over plain memory."""

    def __init__(self, rows: int) -> None:
        self.rows = bytearray(rows * ROW_SIZE)
        self.mappings: dict[tuple[int, int, int], tuple[int, int, int]] = {}
        self.native: set[int] = set()
        self.gone: set[int] = set()

    def unwind_capacity(self) -> int:
        return len(self.rows) // ROW_SIZE

    def write_unwind_rows(self, start: int, rows: bytes) -> None:
        self.rows[start * ROW_SIZE : start * ROW_SIZE + len(rows)] = rows

    def set_unwind_mapping(self, pid, start, end, bias, table_start, table_rows) -> int:
        self.mappings[(pid, start, end)] = (bias, table_start, table_rows)
        return 1

    def delete_unwind_mapping(self, pid, start, end) -> None:
        del self.mappings[(pid, start, end)]

    def set_native(self, pid: int) -> bool:
        if pid in self.gone:
            return False
        self.native.add(pid)
        return True


@pytest.fixture
def sleepers() -> Iterator[list[subprocess.Popen]]:
    processes = [
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) for _ in range(2)
    ]
    for process in processes:  # wait until the interpreter has mapped its libraries
        while not any("libm" in m.path or "python" in m.path for m in read_maps(process.pid)):
            pass
    yield processes
    for process in processes:
        process.kill()
        process.wait()


def exec_file_mappings(pid: int) -> list:
    return [m for m in read_maps(pid) if m.is_exec and m.is_file]


def test_every_executable_mapping_points_at_its_files_rows(sleepers):
    session = RecordingSession(1 << 21)
    unwinder = NativeUnwinder(session)
    pid = sleepers[0].pid
    assert unwinder.add(pid)
    assert session.native == {pid}
    for entry in exec_file_mappings(pid):
        bias, start, rows = session.mappings[(pid, entry.start, entry.end)]
        with open(entry.path, "rb") as stream:
            table = build_table(stream)
        assert rows == table.row_count, entry.path
        assert bytes(session.rows[start * ROW_SIZE : (start + rows) * ROW_SIZE]) == table.rows
        assert bias % 4096 == 0 and entry.start - bias >= 0


def test_a_file_mapped_by_two_processes_is_built_and_placed_once(sleepers):
    session = RecordingSession(1 << 21)
    unwinder = NativeUnwinder(session)
    for process in sleepers:
        unwinder.add(process.pid)
    first, second = (
        {m.path: session.mappings[(p.pid, m.start, m.end)][1:] for m in exec_file_mappings(p.pid)}
        for p in sleepers
    )
    assert first == second
    assert unwinder.stats()["files_built"] == len(first)


def test_placed_only_builds_nothing_and_walks_a_process_whose_files_are_placed(sleepers):
    session = RecordingSession(1 << 21)
    unwinder = NativeUnwinder(session)
    one, two = (p.pid for p in sleepers)
    assert not unwinder.add(one, placed_only=True)  # no table of its files yet
    assert unwinder.stats().get("files_built", 0) == 0
    assert session.native == set() and session.mappings == {}
    unwinder.add(two)  # decided: its tables are built
    built = unwinder.stats()["files_built"]
    assert unwinder.add(one, placed_only=True)  # the same program: nothing to build
    assert unwinder.stats()["files_built"] == built
    assert session.native == {one, two}
    assert {k[1:] for k in session.mappings if k[0] == one} == {
        (m.start, m.end) for m in read_maps(one) if m.is_exec
    }


def test_forgetting_a_process_removes_its_mappings_and_frees_its_files_for_eviction(sleepers):
    session = RecordingSession(1 << 21)
    unwinder = NativeUnwinder(session)
    one, two = (p.pid for p in sleepers)
    unwinder.add(one)
    unwinder.forget(one)
    assert not any(key[0] == one for key in session.mappings)
    files = unwinder.stats()["files"]
    # the other process needs the room: the unused copies are reused, not rebuilt elsewhere
    unwinder.add(two)
    assert unwinder.stats()["files"] == files


def test_without_room_a_file_is_walked_with_frame_pointers_and_counted(sleepers):
    session = RecordingSession(2)  # no file's table fits
    unwinder = NativeUnwinder(session)
    pid = sleepers[0].pid
    unwinder.add(pid)
    assert {value[2] for value in session.mappings.values()} == {0}
    assert unwinder.stats()["files_without_room"] >= 1


def test_a_process_gone_before_it_is_marked_leaves_nothing_behind(sleepers):
    session = RecordingSession(1 << 21)
    unwinder = NativeUnwinder(session)
    pid = sleepers[0].pid
    session.gone.add(pid)
    assert not unwinder.add(pid)
    assert session.mappings == {}


def test_function_starts_come_from_the_files_fdes(sleepers, tmp_path):
    session = RecordingSession(1 << 21)
    unwinder = NativeUnwinder(session, TableCache(tmp_path))
    pid = sleepers[0].pid
    unwinder.add(pid)
    libc = next(m for m in exec_file_mappings(pid) if "libc.so" in m.path)
    with open(libc.path, "rb") as stream:
        table = build_table(stream)
    with open(libc.path, "rb") as stream:
        build_id = read_build_id(stream)
    start, end = table.functions[100], table.function_ends[100]
    assert unwinder.function_start(build_id, start + (end - start) // 2) == start
    assert unwinder.function_start("00" * 20, start) is None


def test_code_without_a_symbol_is_named_by_its_functions_start(tmp_path):
    xz = subprocess.Popen(["xz", "-T1"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    try:
        while not any("liblzma" in m.path for m in read_maps(xz.pid)):
            pass
        session = RecordingSession(1 << 21)
        unwinder = NativeUnwinder(session)
        unwinder.add(xz.pid)
        lzma = next(m for m in exec_file_mappings(xz.pid) if "liblzma" in m.path)
        with open(lzma.path, "rb") as stream:
            table = build_table(stream)
        with open(lzma.path, "rb") as stream:
            info = read_elf(stream)
        # a function with no .dynsym name (liblzma is stripped of .symtab)
        index = next(
            i
            for i, start in enumerate(table.functions)
            if info.symbols.lookup(start) is None and table.function_ends[i] - start > 32
        )
        start = table.functions[index]
        offset = next(
            start - s.vaddr + s.offset
            for s in info.load_segments
            if s.vaddr <= start < s.vaddr + s.memsz
        )
        address = lzma.start + offset - lzma.offset
        with Symbolizer() as symbolizer:
            symbolizer.add_process(xz.pid)
            plain = symbolizer.resolve_user(xz.pid, [address + 20])
            symbolizer.set_function_starts(unwinder.function_start)
            named = symbolizer.resolve_user(xz.pid, [address + 20, address + 9])
    finally:
        xz.kill()
        xz.wait()
    module = lzma.path.rsplit("/", 1)[1]
    assert plain[0].name == f"{module}+0x{offset + 20:x}"
    assert [frame.name for frame in named] == [f"{module}+0x{offset:x}"] * 2
    assert named[0].address == address + 20
