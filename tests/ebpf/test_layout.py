"""The ctypes mirrors in agent/ebpf/layout.py match bpf/profile.h as the C compiler lays it out."""

from __future__ import annotations

import ctypes
import re
import subprocess
from pathlib import Path

import pytest

from agent.ebpf import layout
from tests.conftest import compile_workload

REPO = Path(__file__).resolve().parents[2]

STRUCTS = {
    "profile_config": layout.ProfileConfig,
    "pid_config": layout.PidConfig,
    "sample_key": layout.SampleKey,
    "stack_trace": layout.StackTrace,
    "pid_event": layout.PidEventRecord,
    "control": layout.Control,
    "py_offsets": layout.PyOffsets,
    "py_proc": layout.PyProc,
    "py_frame": layout.PyFrameRecord,
    "py_stack": layout.PyStack,
    "py_symbol_key": layout.PySymbolKey,
    "py_symbol": layout.PySymbol,
    "py_code_lines": layout.PyCodeLines,
    "unwind_row": layout.UnwindRow,
    "unwind_mapping_key": layout.UnwindMappingKey,
    "unwind_mapping": layout.UnwindMapping,
}


@pytest.fixture(scope="module")
def c_layout(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], int]:
    binary = tmp_path_factory.mktemp("layout") / "layout_sizes"
    compile_workload("layout_sizes.c", binary, "-I", str(REPO / "bpf"))
    lines = subprocess.run([str(binary)], capture_output=True, text=True, check=True).stdout
    return {(s, f): int(v) for s, f, v in (line.split() for line in lines.splitlines())}


@pytest.mark.parametrize("name", sorted(STRUCTS))
def test_struct_size_and_offsets_match_the_header(c_layout, name):
    mirror = STRUCTS[name]
    assert ctypes.sizeof(mirror) == c_layout[(name, "sizeof")]
    checked = 0
    for field, *_ in mirror._fields_:
        if (name, field) in c_layout:
            assert getattr(mirror, field).offset == c_layout[(name, field)], field
            checked += 1
    assert checked >= 1


def test_enums_match_the_header(c_layout):
    enums = {f: v for (s, f), v in c_layout.items() if s == "enum"}
    ours = {
        **{f"PID_STATE_{m.name}": m.value for m in layout.PidState},
        **{f"DROP_{m.name}": m.value for m in layout.DropReason},
        **{f"PID_EVENT_{m.name}": m.value for m in layout.PidEventType},
        **{f"PY_STAT_{m.name}": m.value for m in layout.PyStat},
        **{f"UNWIND_{m.name}": m.value for m in layout.UnwindStat},
        **{f"NATIVE_{m.name}": m.value for m in layout.NativeMode},
        **{f"PY_GIL_{m.name}": m.value for m in layout.PyGil},
    }
    assert ours == enums


@pytest.mark.parametrize(
    "name",
    [
        "PERF_MAX_STACK_DEPTH",
        "MAX_STACK_DEPTH",
        "MAX_PY_FRAMES",
        "PY_NAME_LEN",
        "PY_FILE_LEN",
        "PY_LINETABLE_LEN",
        "PY_NO_OFFSET",
        "PY_FRAME_ENTRY",
        "PY_STACK_TRUNCATED",
    ],
)
def test_constants_match_the_header(name):
    header = (REPO / "bpf/profile.h").read_text()
    value = getattr(layout, name)
    assert re.search(rf"#define {name}\s+({value}|{value:#x})\b", header), name


def test_python_stacks_convert_from_the_kernel_layout():
    from agent.ebpf.session import _python_stack

    stack = layout.PyStack(depth=3, flags=layout.PY_STACK_TRUNCATED)
    for index in range(3):
        stack.frames[index] = layout.PyFrameRecord(
            0x7F0000001000 + 16 * index, 10 + index, index - 2
        )
    stack.frame_flags[2] = layout.PY_FRAME_ENTRY
    converted = _python_stack(99, stack)
    assert converted.key == 99 and converted.truncated
    assert [(f.code, f.first_line, f.lasti, f.entry) for f in converted.frames] == [
        (0x7F0000001000, 10, -2, False),
        (0x7F0000001010, 11, -1, False),
        (0x7F0000001020, 12, 0, True),
    ]


def test_line_table_records_are_read_up_to_their_table():
    from agent.ebpf.session import _PY_LINES_HEADER

    assert _PY_LINES_HEADER.size == layout.PyCodeLines.table.offset
