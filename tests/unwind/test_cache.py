"""agent.unwind.cache: tables stored by build ID, loaded back fast, and every file
that cannot be trusted rejected with UnwindError and rebuilt."""

from __future__ import annotations

import os
import struct
import time

import pytest

from agent.symbols import read_build_id
from agent.unwind import CACHE_VERSION, TableCache, UnwindError, build_table

PYTHON = "/usr/bin/python3.11"


@pytest.fixture(scope="module")
def python_table():
    with open(PYTHON, "rb") as file:
        return read_build_id(file), build_table(open(PYTHON, "rb"))


def test_a_stored_table_loads_back_equal(tmp_path, python_table):
    build_id, table = python_table
    cache = TableCache(tmp_path / "unwind")
    assert cache.load(build_id) is None
    cache.store(build_id, table)
    assert os.listdir(tmp_path / "unwind") == [f"{build_id}.unwind"]
    assert cache.load(build_id) == table


def test_loading_python_takes_under_10_ms(tmp_path, python_table):
    build_id, table = python_table
    cache = TableCache(tmp_path)
    cache.store(build_id, table)
    timings = []
    for _ in range(5):
        started = time.perf_counter()
        cache.load(build_id)
        timings.append(time.perf_counter() - started)
    assert min(timings) < 0.010


def test_load_or_build_builds_once_then_reads(tmp_path, python_table):
    build_id, table = python_table
    cache = TableCache(tmp_path)
    assert cache.load_or_build(build_id, open(PYTHON, "rb"), PYTHON) == table
    stamp = os.stat(cache.path(build_id)).st_mtime_ns
    # A second call reads the file: a stream that cannot be read is never touched.
    assert cache.load_or_build(build_id, None, PYTHON) == table
    assert os.stat(cache.path(build_id)).st_mtime_ns == stamp
    assert cache.rejected == 0


def _damaged(path, edit):
    data = bytearray(open(path, "rb").read())
    data = edit(data)
    with open(path, "wb") as file:
        file.write(data)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d[:-1], "truncated"),
        (lambda d: d + b"\0", "truncated"),
        (lambda d: d[:10], "shorter than its header"),
        (lambda d: b"", "shorter than its header"),
        (lambda d: d[:100] + bytes([d[100] ^ 1]) + d[101:], "CRC32"),
        (lambda d: b"ELF\0" + d[4:], "not an Emberscope"),
        (lambda d: d[:8] + struct.pack("<I", CACHE_VERSION + 1) + d[12:], "version"),
    ],
    ids=["short", "padded", "header_cut", "empty", "flipped_bit", "magic", "version"],
)
def test_untrusted_files_are_rejected_and_rebuilt(tmp_path, python_table, edit, message):
    build_id, table = python_table
    cache = TableCache(tmp_path)
    cache.store(build_id, table)
    _damaged(cache.path(build_id), edit)
    with pytest.raises(UnwindError, match=message):
        cache.load(build_id)
    assert cache.load_or_build(build_id, open(PYTHON, "rb"), PYTHON) == table
    assert cache.rejected == 1
    assert cache.load(build_id) == table


def test_a_file_of_another_build_id_is_rejected(tmp_path, python_table):
    build_id, table = python_table
    cache = TableCache(tmp_path)
    cache.store(build_id, table)
    other = "00" * 20
    os.rename(cache.path(build_id), cache.path(other))
    with pytest.raises(UnwindError, match="belongs to build ID"):
        cache.load(other)


@pytest.mark.parametrize("build_id", ["", "../etc/passwd", "ABCD", "a/b", "0"])
def test_only_hex_build_ids_name_files(tmp_path, build_id):
    with pytest.raises(UnwindError, match="not a build ID"):
        TableCache(tmp_path).path(build_id)


def test_store_replaces_and_leaves_no_temporary_files(tmp_path, python_table):
    build_id, table = python_table
    cache = TableCache(tmp_path)
    cache.store(build_id, build_table(open("/usr/bin/gzip", "rb")))
    cache.store(build_id, table)
    assert os.listdir(tmp_path) == [f"{build_id}.unwind"]
    assert cache.load(build_id) == table


def test_an_unwritable_directory_still_returns_the_table(tmp_path, python_table):
    build_id, table = python_table
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    cache = TableCache(blocker / "unwind")  # a directory under a regular file
    with pytest.raises(UnwindError, match="cannot write"):
        cache.store(build_id, table)
    assert cache.load_or_build(build_id, open(PYTHON, "rb"), PYTHON) == table
    assert cache.write_errors == 1
