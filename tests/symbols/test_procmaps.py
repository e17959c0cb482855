"""agent.symbols.procmaps on captured lines and on live processes."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from agent.errors import ProcessError, SymbolError
from agent.symbols import procmaps
from agent.symbols.procmaps import (
    MapEntry,
    open_in_root,
    open_mapped_file,
    parse_maps,
    read_maps,
    read_process_entry,
)
from tests.agent import wait_for

CAPTURED = """\
55d4a1a00000-55d4a1a02000 r--p 00000000 fd:01 1835021                    /usr/bin/cat
55d4a1a02000-55d4a1a07000 r-xp 00002000 fd:01 1835021                    /usr/bin/cat
55d4a2c1e000-55d4a2c3f000 rw-p 00000000 00:00 0                          [heap]
7f3c1c000000-7f3c1c021000 rw-p 00000000 00:00 0 
7f3c1c200000-7f3c1c300000 r-xp 00001000 00:2c 98                         /opt/my app/lib worker.so
7f3c1c400000-7f3c1c401000 r-xp 00000000 103:05 77                        /tmp/a.out (deleted)
7ffd5e9f2000-7ffd5e9f4000 r-xp 00000000 00:00 0                          [vdso]
"""


def test_parses_every_column_of_a_file_mapping():
    entry = parse_maps(CAPTURED)[1]
    assert entry == MapEntry(
        start=0x55D4A1A02000,
        end=0x55D4A1A07000,
        perms="r-xp",
        offset=0x2000,
        dev_major=0xFD,
        dev_minor=1,
        inode=1835021,
        path="/usr/bin/cat",
    )
    assert entry.is_exec and entry.is_file


def test_path_keeps_its_spaces():
    assert parse_maps(CAPTURED)[4].path == "/opt/my app/lib worker.so"


def test_deleted_suffix_is_stripped_and_flagged():
    entry = parse_maps(CAPTURED)[5]
    assert entry.path == "/tmp/a.out"
    assert entry.deleted
    assert (entry.dev_major, entry.dev_minor) == (0x103, 5)
    assert not parse_maps(CAPTURED)[1].deleted


def test_anonymous_and_special_mappings_are_not_files():
    entries = parse_maps(CAPTURED)
    heap, anonymous, vdso = entries[2], entries[3], entries[6]
    assert heap.path == "[heap]" and not heap.is_file and not heap.is_exec
    assert anonymous.path == "" and not anonymous.is_file
    assert vdso.is_exec and not vdso.is_file


@pytest.mark.parametrize(
    ("line", "what"),
    [
        ("this is not a maps line at all", "malformed"),
        ("7f00-7f10 r-xp", "at least 5 columns"),
        ("7f10-7f00 r-xp 00000000 00:00 0", "bad range"),
        ("7f00:7f10 r-xp 00000000 00:00 0", "malformed"),
        ("7f00-7f10 r-xp 0000zz00 00:00 0", "malformed"),
        ("7f00-7f10 r-xp 00000000 0000 0", "malformed"),
        ("7f00-7f10 r-x 00000000 00:00 0", "permissions"),
    ],
)
def test_garbage_line_raises_symbol_error_naming_source_and_line(line, what):
    with pytest.raises(SymbolError) as caught:
        parse_maps(CAPTURED.splitlines()[0] + "\n" + line + "\n", source="/proc/7/maps")
    assert caught.value.path == "/proc/7/maps"
    assert caught.value.reason.startswith("line 2:")
    assert what in caught.value.reason


def test_reads_own_maps_like_the_kernel_lists_them():
    with open("/proc/self/maps") as stream:
        expected = [line.split()[0] for line in stream]
    entries = read_maps(os.getpid())
    # Our own maps may change between the two reads (allocations), so compare
    # the executable file mappings, which are stable.
    code = {f"{e.start:x}-{e.end:x}" for e in entries if e.is_exec and e.is_file}
    assert code and code <= set(expected)
    assert any(e.path == os.path.realpath(sys.executable) for e in entries)


def test_reaped_process_raises_process_error():
    child = subprocess.Popen(["true"])
    child.wait()
    with pytest.raises(ProcessError) as caught:
        read_maps(child.pid)
    assert caught.value.pid == child.pid


def test_reads_from_an_injected_proc_root(tmp_path):
    (tmp_path / "42").mkdir()
    (tmp_path / "42" / "maps").write_text(CAPTURED)
    assert read_maps(42, proc_root=str(tmp_path)) == parse_maps(CAPTURED)


def test_zombie_with_empty_maps_raises_process_error():
    child = subprocess.Popen(["true"])
    try:
        deadline = time.monotonic() + 5
        while Path(f"/proc/{child.pid}/stat").read_text().split(") ")[1][0] != "Z":
            assert time.monotonic() < deadline, "child never became a zombie"
            time.sleep(0.01)
        with pytest.raises(ProcessError, match="no memory mappings"):
            read_maps(child.pid)
    finally:
        child.wait()


def test_malformed_maps_file_names_its_path(tmp_path):
    (tmp_path / "44").mkdir()
    (tmp_path / "44" / "maps").write_text("garbage\n")
    with pytest.raises(SymbolError) as caught:
        read_maps(44, proc_root=str(tmp_path))
    assert caught.value.path == f"{tmp_path}/44/maps"


# Files of a process, opened so that the process cannot make the agent block.


def test_maps_of_many_mappings_share_one_path_string(tmp_path):
    (tmp_path / "45").mkdir()
    lines = "".join(
        f"{0x10000 * i:x}-{0x10000 * i + 0x1000:x} r-xp 00000000 fd:01 7 /usr/lib/libbig.so\n"
        for i in range(1, 1000)
    )
    (tmp_path / "45" / "maps").write_text(lines)
    entries = read_maps(45, proc_root=str(tmp_path))
    assert len(entries) == 999 and len({id(entry.path) for entry in entries}) == 1


def test_maps_longer_than_the_cap_raise_process_error(tmp_path, monkeypatch):
    monkeypatch.setattr(procmaps, "MAX_MAPS_BYTES", 1000)
    (tmp_path / "46").mkdir()
    (tmp_path / "46" / "maps").write_text(CAPTURED * 20)
    with pytest.raises(ProcessError, match="maps is longer than 1000 bytes"):
        read_maps(46, proc_root=str(tmp_path))


def test_a_fifo_in_place_of_a_proc_entry_is_refused_without_blocking(tmp_path):
    (tmp_path / "47").mkdir()
    os.mkfifo(tmp_path / "47" / "maps")
    os.mkfifo(tmp_path / "47" / "cgroup")
    started = time.monotonic()
    with pytest.raises(ProcessError, match="is a FIFO, not a regular file"):
        read_maps(47, proc_root=str(tmp_path))
    with pytest.raises(ProcessError, match="is a FIFO, not a regular file"):
        read_process_entry(47, "cgroup", proc_root=str(tmp_path))
    assert time.monotonic() - started < 0.5


def test_read_process_entry_reads_the_real_stat_and_bounds_the_rest():
    stat = read_process_entry(os.getpid(), "stat")
    assert stat.startswith(f"{os.getpid()} (".encode())
    with pytest.raises(ProcessError, match="is longer than 10 bytes"):
        read_process_entry(os.getpid(), "stat", limit=10)
    with pytest.raises(ProcessError, match="exe: Too many levels of symbolic links"):
        read_process_entry(os.getpid(), "exe")  # a symlink is never followed


def test_read_process_entry_of_a_reaped_process_says_it_is_gone():
    child = subprocess.Popen(["true"])
    child.wait()
    with pytest.raises(ProcessError, match="process is gone"):
        read_process_entry(child.pid, "cgroup")


@pytest.fixture
def fake_process(tmp_path):
    """A /proc/<pid> without map_files, its root holding a FIFO where a library was mapped."""
    (tmp_path / "48" / "root" / "lib").mkdir(parents=True)
    os.mkfifo(tmp_path / "48" / "root" / "lib" / "libswapped.so")
    entry = parse_maps("10000-11000 r-xp 00000000 fd:01 9 /lib/libswapped.so")[0]
    return tmp_path, entry


def test_a_mapped_file_swapped_for_a_fifo_is_refused_without_blocking(fake_process):
    proc_root, entry = fake_process
    started = time.monotonic()
    with pytest.raises(ProcessError, match="libswapped.so: is a FIFO, not a regular file"):
        open_mapped_file(48, entry, proc_root=str(proc_root))
    assert time.monotonic() - started < 0.5


def test_a_mapped_file_opens_through_map_files_as_a_regular_file():
    entry = next(e for e in read_maps(os.getpid()) if e.is_exec and e.is_file)
    with open_mapped_file(os.getpid(), entry) as stream:
        assert stream.read(4) == b"\x7fELF"


def test_a_mapped_device_is_refused_without_being_opened(tmp_path):
    # A process may map a device: its maps line looks like any file's.
    (tmp_path / "49" / "map_files").mkdir(parents=True)
    (tmp_path / "49" / "map_files" / "10000-11000").symlink_to("/dev/zero")
    entry = parse_maps("10000-11000 r-xp 00000000 00:05 4 /dev/zero")[0]
    with pytest.raises(ProcessError, match="is a character device, not a regular file"):
        open_mapped_file(49, entry, proc_root=str(tmp_path))


def test_open_in_root_keeps_symlinks_inside_the_root(tmp_path):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "name").write_text("inside")
    (tmp_path / "etc_name").write_text("outside")
    (root / "absolute").symlink_to("/etc/name")
    (root / "climbing").symlink_to("../../../../etc_name")
    with open_in_root(str(root), "/absolute") as stream:
        assert stream.read() == b"inside"
    assert open_in_root(str(root), "/climbing") is None
    assert open_in_root(str(root), "/../etc_name") is None
    assert open_in_root(str(tmp_path / "gone"), "/etc/name") is None
    with pytest.raises(SymbolError, match="is a directory, not a regular file"):
        open_in_root(str(root), "/etc")


def test_a_maps_read_that_hangs_is_given_up_after_the_deadline(monkeypatch):
    """A process can hold its memory-map lock (a page fault on a hung file system):
    the read is left on its own thread and the caller gets an error in time."""
    release = threading.Event()
    monkeypatch.setattr(procmaps, "READ_DEADLINE_S", 0.2)
    monkeypatch.setattr(procmaps, "_read_lines", lambda *args: release.wait(30) and [])
    started = time.monotonic()
    try:
        with pytest.raises(ProcessError, match="no answer within 0.2 s"):
            procmaps.read_maps(os.getpid())
        assert time.monotonic() - started < 1
    finally:
        release.set()


def readers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("read ") and t.is_alive()]


def test_stuck_reads_do_not_pile_up_threads(monkeypatch):
    wait_for(lambda: not readers(), 5, "reads left by another test")
    release = threading.Event()
    monkeypatch.setattr(procmaps, "READ_DEADLINE_S", 0.05)
    monkeypatch.setattr(procmaps, "_read_lines", lambda *args: release.wait(30) and [])
    try:
        for _ in range(procmaps._STUCK_READS):
            with pytest.raises(ProcessError, match="no answer"):
                procmaps.read_maps(os.getpid())
        with pytest.raises(ProcessError, match="reads of process files are stuck"):
            procmaps.read_maps(os.getpid())
        assert len(readers()) == procmaps._STUCK_READS
    finally:
        release.set()
    deadline = time.monotonic() + 5
    while readers() and time.monotonic() < deadline:
        time.sleep(0.01)
    monkeypatch.undo()
    assert procmaps.read_maps(os.getpid())  # the slots are free again
