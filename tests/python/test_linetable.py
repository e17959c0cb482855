"""Line tables decoded against the interpreters themselves: every instruction of a corpus
of stdlib modules and awkward code, as CPython reports it, plus malformed tables."""

from __future__ import annotations

import json
import subprocess
from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.errors import PythonError
from agent.python.linetable import LineTable

# Runs under the interpreter being checked (3.8+: no 3.9+ syntax or APIs). Prints one
# JSON record per code object: its table, and the line of every instruction offset by
# the Python-level oracle (co_lines on 3.10+, dis.findlinestarts before) and by
# PyCode_Addr2Line (-1 kept: no line), plus Addr2Line(-2), a frame not yet started.
ORACLE = r'''
import ctypes, dis, importlib.util, json, sys, types

MODULES = ["inspect", "dis", "json.decoder", "asyncio.base_events", "typing"]

SNIPPET = """
def spaced(a, b):

    x = a


    y = b

    return x + y


squares = [n * n for n in range(10) if n % 2]
pairs = {k: v for k, v in zip("ab", (1,
                                     2))}
key = lambda item: (item[1],
                    item[0])
total = (1 +
         2 +
         squares[0]
         )


def guarded(path):
    try:
        with open(path) as handle:
            return handle.read()
    except (OSError, ValueError) as exc:
        raise RuntimeError(path) from exc
    finally:
        print("done")


async def waiting(queue):
    async for item in queue:
        await item


def chained(value):
    while value > 0:
""" + "".join("        value -= %d\n" % i for i in range(150)) + """\
""" + "".join("    # filler %d\n" % i for i in range(200)) + """\
    label = "%s" + str(value)
    result = max(
""" % ("x" * 200) + "".join("        %d,\n" % i for i in range(200)) + """\
    )
    return [label, result, lambda: (value,
                                    label)]
"""

prototype = ctypes.pythonapi.PyCode_Addr2Line
prototype.argtypes = [ctypes.py_object, ctypes.c_int]
prototype.restype = ctypes.c_int


def oracle_lines(code):
    count = len(code.co_code) // 2
    if sys.version_info >= (3, 10):
        lines = [0] * count
        for start, end, line in code.co_lines():
            for offset in range(start, min(end, 2 * count), 2):
                lines[offset // 2] = line or 0
        return lines
    starts = list(dis.findlinestarts(code))
    lines, current, index = [], 0, 0
    for offset in range(0, 2 * count, 2):
        while index < len(starts) and starts[index][0] <= offset:
            current = starts[index][1]
            index += 1
        lines.append(current)
    return lines


def walk(code):
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            for inner in walk(const):
                yield inner


sources = [("<snippet>", SNIPPET)]
for name in MODULES:
    path = importlib.util.find_spec(name).origin
    with open(path, encoding="utf-8") as handle:
        sources.append((path, handle.read()))

records = []
for path, source in sources:
    for code in walk(compile(source, path, "exec")):
        table = code.co_lnotab if sys.version_info < (3, 10) else code.co_linetable
        records.append({
            "name": "%s:%s" % (path, code.co_name),
            "first_line": code.co_firstlineno,
            "table": table.hex(),
            "lines": oracle_lines(code),
            "addr2line": [prototype(code, offset) for offset in range(0, len(code.co_code), 2)],
            "before_start": prototype(code, -2),
        })
json.dump(records, sys.stdout)
'''


def run_oracle(path) -> list[dict]:
    done = subprocess.run(
        [str(path), "-c", ORACLE], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_every_instruction_gets_the_line_cpython_gives_it(interpreter):
    path, version = interpreter
    records = run_oracle(path)
    checked, mismatches = 0, []
    for record in records:
        table = LineTable(version, bytes.fromhex(record["table"]), record["first_line"])
        assert table.line(-2) == record["before_start"], record["name"]
        pairs = zip(record["lines"], record["addr2line"], strict=True)
        for index, (expected, by_c) in enumerate(pairs):
            got = table.line(2 * index)
            checked += 1
            if got != expected or expected != max(by_c, 0):
                mismatches.append((record["name"], 2 * index, got, expected, by_c))
    print(f"{path} ({version[0]}.{version[1]}): {len(records)} code objects, {checked} offsets")
    assert mismatches[:10] == []
    assert checked > 10_000


def test_the_corpus_has_the_awkward_cases(interpreter):
    """Long jumps both ways, and on 3.10+ instructions without a line, really occur."""
    path, version = interpreter
    steps = set()
    no_line = 0
    for record in run_oracle(path):
        lines = record["lines"]
        no_line += lines.count(0)
        known = [line for line in lines if line]
        steps.update(after - before for before, after in pairwise(known))
    assert max(steps) > 127 and min(steps) < -127
    assert no_line > 0 or version < (3, 10)


def location(code: int, units: int = 1) -> int:
    """The first byte of a 3.11+ location entry."""
    return 0x80 | code << 3 | (units - 1)


@pytest.mark.parametrize(
    ("version", "table", "lines"),
    [
        # 3.8: a pair applies from the offset it reaches: +1 line at 6 with +254 split over
        # two more pairs, +46 at 10, -2 (0xfe) at 12, which runs on past the table.
        (
            (3, 8),
            bytes([6, 1, 0, 127, 0, 127, 4, 46, 2, 0xFE]),
            {0: 5, 4: 5, 6: 260, 10: 306, 12: 304, 100: 304},
        ),
        # 3.10: 4 bytes on line +1, 2 bytes without a line, 2 bytes at +2 then beyond.
        ((3, 10), bytes([4, 1, 2, 0x80, 2, 2]), {0: 6, 2: 6, 4: 0, 6: 8, 8: 0}),
        # 3.11: a short form, one-line +2, no location, long form -3, no-columns +100.
        (
            (3, 11),
            bytes([location(1), 0x00])
            + bytes([location(12, 2), 1, 5])
            + bytes([location(15)])
            + bytes([location(14), 7, 1, 5, 9])
            + bytes([location(13), 0x48, 0x03]),
            {0: 5, 2: 7, 4: 7, 6: 0, 8: 4, 10: 104, 12: 0},
        ),
    ],
)
def test_hand_built_tables_decode_as_documented(version, table, lines):
    decoded = LineTable(version, table, first_line=5)
    assert {offset: decoded.line(offset) for offset in lines} == lines
    assert decoded.line(-2) == 5


@pytest.mark.parametrize("version", [(3, 8), (3, 10), (3, 12)])
def test_an_empty_table_gives_no_line_but_the_start(version):
    table = LineTable(version, b"", first_line=7)
    assert table.line(-2) == 7
    # 3.8/3.9 tables have no end: an empty one leaves every offset on the first line.
    assert table.line(0) == (7 if version < (3, 10) else 0)


@pytest.mark.parametrize(
    ("version", "table", "problem"),
    [
        ((3, 11), bytes([location(13), 0x41]), "truncated"),
        ((3, 11), bytes([location(13), 0x41, location(0)]), "truncated"),
        ((3, 12), bytes([location(14), 2, 0, 0]), "truncated"),
        ((3, 12), bytes([location(13)] + [0x7F] * 7), "longer than"),
        ((3, 13), bytes([location(11), 3]), "cut short"),
        ((3, 11), bytes([0x05]), "start bit"),
        ((3, 9), bytes([2, 1, 2]), "odd length"),
        ((3, 10), bytes([2]), "odd length"),
        ((3, 7), b"", "no line table format"),
    ],
)
def test_malformed_tables_raise_python_error_naming_the_problem(version, table, problem):
    with pytest.raises(PythonError, match=problem):
        LineTable(version, table, first_line=1)


@given(
    version=st.sampled_from([(3, 8), (3, 9), (3, 10), (3, 11), (3, 12), (3, 13)]),
    table=st.binary(max_size=64),
    first_line=st.integers(min_value=0, max_value=1 << 31),
    offsets=st.lists(st.integers(min_value=-4, max_value=600), max_size=8),
)
def test_random_tables_raise_nothing_but_python_error(version, table, first_line, offsets):
    try:
        decoded = LineTable(version, table, first_line)
    except PythonError:
        return
    for offset in offsets:
        assert isinstance(decoded.line(offset), int)
