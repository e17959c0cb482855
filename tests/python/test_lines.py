"""Line numbers that outlive the process: a script that exits before its
profile is written keeps the lines of its hot functions (the kernel sends each
new code object's line table), and a frame whose table cannot be had gets its
function's first line and is counted."""

from __future__ import annotations

import sys
from collections import Counter

import pytest

from agent.ebpf import PythonFrameRecord, PythonLineTable, PythonStack
from agent.errors import PythonError
from agent.python.linetable import LineTable
from agent.python.offsets import offsets_for
from agent.python.symbols import PythonSymbolizer
from tests.agent import read_samples

SCRIPT = """\
import time


def hot(n):
    total = 0
    for i in range(n):
        total += i * i  # hot: hot
    return total


end = time.monotonic() + 3
while time.monotonic() < end:
    hot(10000)
"""
HOT_LINE = SCRIPT.splitlines().index("        total += i * i  # hot: hot") + 1


@pytest.mark.usefixtures("bpf_ready")
def test_a_script_that_exits_before_the_profile_is_written_keeps_its_lines(
    interpreter, emberscope, tmp_path
):
    python, _ = interpreter
    script = tmp_path / "work.py"
    script.write_text(SCRIPT)
    out = tmp_path / "short.pb.gz"
    result = emberscope(
        "profile", "--duration", "6s", "--output", str(out), "--", str(python), str(script)
    )
    assert result.returncode == 0, result.stderr
    lines: Counter[int] = Counter()
    for sample in read_samples(out):
        for site in sample.python:
            if site.name == "hot":
                lines[site.line] += sample.count
                break
    print(f"{python}: lines of hot(): {dict(lines)}")
    assert sum(lines.values()) > 50, lines
    assert 0 not in lines, lines
    # the loop body and the for line share the loop's samples
    assert lines.most_common(1)[0][0] in (HOT_LINE, HOT_LINE - 1), lines
    assert lines[HOT_LINE] + lines[HOT_LINE - 1] >= 0.9 * sum(lines.values()), lines


# --- without a process to read: what the kernel sent, and nothing -----------------------


def work(n):
    total = 0
    for i in range(n):
        total += i
    return total


def _table(code) -> bytes:
    return code.co_lnotab if sys.version_info < (3, 10) else code.co_linetable


@pytest.fixture
def symbolizer(tmp_path) -> PythonSymbolizer:
    """Names none (py_symbols empty) and reads a /proc without the process."""
    symbolizer = PythonSymbolizer(lambda *_: None, 64, proc_root=str(tmp_path))
    symbolizer.add_process(4242, offsets_for(sys.version_info[:2]))
    return symbolizer


def _last_instruction(code) -> tuple[int, int]:
    """The byte offset of the function's return and its line."""
    offset, _, line = list(code.co_lines())[-1]
    return offset, line


def _lasti(byte_offset: int) -> int:
    """What the kernel records for that offset on this interpreter."""
    offsets = offsets_for(sys.version_info[:2])
    return byte_offset if offsets.instr_is_pointer else byte_offset // offsets.lasti_unit


@pytest.mark.skipif(sys.version_info < (3, 10), reason="co_lines() is 3.10+")
def test_a_sent_table_names_lines_after_the_process_is_gone(symbolizer):
    code = work.__code__
    offset, line = _last_instruction(code)
    symbolizer.keep([PythonLineTable(4242, 0x1000, code.co_firstlineno, _table(code), False)])
    record = PythonFrameRecord(0x1000, code.co_firstlineno, _lasti(offset), True)
    frames = symbolizer.resolve(4242, PythonStack(1, (record,), False))
    assert frames[0].frame.line == line != code.co_firstlineno
    assert symbolizer.lines_unknown == 0


@pytest.mark.skipif(sys.version_info < (3, 10), reason="co_lines() is 3.10+")
def test_without_a_table_a_frame_gets_its_first_line_and_is_counted(symbolizer):
    code = work.__code__
    offset, _ = _last_instruction(code)
    record = PythonFrameRecord(0x2000, code.co_firstlineno, _lasti(offset), True)
    frames = symbolizer.resolve(4242, PythonStack(2, (record,), False))
    assert frames[0].frame.line == code.co_firstlineno
    assert symbolizer.lines_unknown == 1


@pytest.mark.skipif(sys.version_info < (3, 10), reason="co_lines() is 3.10+")
def test_a_cut_table_names_what_it_kept_and_counts_the_rest(symbolizer):
    code = work.__code__
    table = _table(code)
    first_offset, _, first_line = next(iter(code.co_lines()))
    last_offset, _ = _last_instruction(code)
    cut = table[: len(table) // 2]
    symbolizer.keep([PythonLineTable(4242, 0x3000, code.co_firstlineno, cut, True)])
    records = (
        PythonFrameRecord(0x3000, code.co_firstlineno, _lasti(first_offset), False),
        PythonFrameRecord(0x3000, code.co_firstlineno, _lasti(last_offset), True),
    )
    frames = symbolizer.resolve(4242, PythonStack(3, records, False))
    assert frames[0].frame.line == first_line
    assert frames[1].frame.line == code.co_firstlineno
    assert symbolizer.lines_unknown == 1


@pytest.mark.parametrize(
    ("version", "table", "known", "unknown"),
    [
        # 3.8 lnotab: +6 bytes -> line 11, +4 bytes -> line 12; the odd byte is cut off
        ((3, 8), bytes([6, 1, 4, 1, 8]), 9, 10),
        # 3.10: 6 bytes on line 11, 4 on line 12, then half a pair
        ((3, 10), bytes([6, 1, 4, 1, 8]), 9, 10),
        # 3.12: one-line forms (code 11: line + 1), 1 and 2 code units; the
        # third entry lost its column bytes
        ((3, 12), bytes([0xD8, 0, 0, 0xD9, 1, 1, 0xD8]), 5, 6),
    ],
)
def test_a_cut_line_table_covers_only_its_whole_entries(version, table, known, unknown):
    lines = LineTable(version, table, first_line=10, cut=True)
    assert lines.covers(known) and not lines.covers(unknown)
    assert lines.line(0) in (10, 11)
    with pytest.raises(PythonError):  # whole, the same bytes are malformed
        LineTable(version, table, first_line=10)
