"""agent.symbols.procmaps on captured lines and on live processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.errors import ProcessError, SymbolError
from agent.symbols.procmaps import MapEntry, parse_maps, read_maps

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
