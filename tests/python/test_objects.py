"""Reading CPython objects through /proc/<pid>/mem, on this very interpreter."""

from __future__ import annotations

import os
import sys

import pytest

from agent.errors import ProcessError, PythonError
from agent.python.objects import ProcessMemory, decode_str
from agent.python.offsets import offsets_for

OFFSETS = offsets_for(sys.version_info[:2])


@pytest.fixture
def memory():
    with ProcessMemory(os.getpid()) as opened:
        yield opened


@pytest.mark.parametrize(
    "text",
    ["step", "Worker.step", "méthode", "ステップ", "🔥flame", "x" * 300],
    ids=["ascii", "qualname", "latin-1", "ucs-2", "ucs-4", "long"],
)
def test_a_str_reads_back_as_itself(memory, text):
    # a fresh object, not a cached constant with another representation
    text = "".join(list(text))
    assert (
        memory.read_str(id(text), OFFSETS.unicode_ascii_data, OFFSETS.unicode_compact_data) == text
    )


def test_a_bytes_object_reads_back_as_itself(memory):
    data = bytes(range(256)) * 3
    assert memory.read_bytes_object(id(data)) == data


def test_a_code_objects_line_table_is_found_at_its_offset(memory):
    code = test_a_code_objects_line_table_is_found_at_its_offset.__code__
    table = memory.read_bytes_object(memory.read_pointer(id(code) + OFFSETS.code_linetable))
    assert table == code.co_linetable


def test_unreadable_memory_and_gone_processes_are_process_errors(memory):
    with pytest.raises(ProcessError, match="cannot read 8 bytes at 0x10"):
        memory.read(0x10, 8)
    with pytest.raises(ProcessError, match="cannot read at"):
        memory.read(1 << 70, 8)
    with pytest.raises(ProcessError, match="process is gone"):
        ProcessMemory(2**22 + 12345)


def test_str_kinds_outside_1_2_4_are_refused():
    assert decode_str("é".encode("utf-16-le"), 2) == "é"
    with pytest.raises(PythonError, match="kind 3"):
        decode_str(b"abc", 3)
