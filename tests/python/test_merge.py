"""Native and Python frames of one sample merged into one stack."""

from __future__ import annotations

import pytest

from agent.python.merge import is_eval_loop, merge_stacks
from agent.python.symbols import TRUNCATED_FRAME, PythonFrame
from agent.symbols import Frame, MappedFile

LIBPYTHON = MappedFile(0x1000, 0x9000, 0, "/usr/lib/libpython3.12.so.1.0")
LIBZ = MappedFile(0xA000, 0xB000, 0, "/usr/lib/libz.so.1")
MAIN = MappedFile(0x100, 0x200, 0, "/usr/bin/python3.12")


def native(name: str, mapping: MappedFile | None = LIBPYTHON) -> Frame:
    return Frame(name, address=hash(name) & 0xFFFF, mapping=mapping)


def py(name: str, entry: bool = False) -> PythonFrame:
    return PythonFrame(Frame(name, filename="app.py", line=1), entry)


def in_libpython(frame: Frame) -> bool:
    return frame.mapping is LIBPYTHON


def names(frames: list[Frame]) -> list[str]:
    return [frame.name for frame in frames]


@pytest.mark.parametrize(
    "name, expected",
    [
        ("_PyEval_EvalFrameDefault", True),
        ("_PyEval_EvalFrameDefault.cold", True),
        ("_PyEval_EvalFrameDefault.part.0", True),
        ("_PyEval_EvalFrame", False),
        ("_PyEval_EvalFrameDefaultX", False),
        ("PyEval_EvalCode", False),
    ],
)
def test_eval_loop_frames_are_recognised_with_gcc_suffixes(name, expected):
    assert is_eval_loop(Frame(name)) is expected


def test_each_eval_loop_frame_is_replaced_by_its_block_of_python_frames():
    stack = [
        native("deflate_slow", LIBZ),
        native("zlib_compress", LIBZ),
        native("cfunction_call"),
        native("_PyEval_EvalFrameDefault"),  # runs inner, helper
        native("map_next"),
        native("_PyEval_EvalFrameDefault"),  # runs outer, <module>
        native("Py_RunMain"),
        native("main", MAIN),
    ]
    python = [py("inner"), py("helper", entry=True), py("outer"), py("<module>", entry=True)]
    assert names(merge_stacks(stack, python, in_libpython)) == [
        "deflate_slow",
        "zlib_compress",
        "cfunction_call",
        "inner",
        "helper",
        "map_next",
        "outer",
        "<module>",
        "Py_RunMain",
        "main",
    ]


def test_a_last_block_without_an_entry_marker_still_replaces_an_eval_frame():
    stack = [native("_PyEval_EvalFrameDefault"), native("main", MAIN)]
    assert names(merge_stacks(stack, [py("f"), py("g")], in_libpython)) == ["f", "g", "main"]


def test_surplus_eval_loop_frames_stay_native():
    stack = [
        native("_PyEval_EvalFrameDefault"),
        native("_PyEval_EvalFrameDefault"),
        native("main", MAIN),
    ]
    merged = merge_stacks(stack, [py("f", entry=True)], in_libpython)
    assert names(merged) == ["f", "_PyEval_EvalFrameDefault", "main"]


def test_without_a_native_walk_the_sure_leaf_frames_sit_on_the_whole_python_stack():
    # No frame pointers in libpython: the walk stops after the interpreter's
    # first frame, or wanders into addresses in no file.
    stack = [native("long_add"), native("somewhere_else"), native("main", MAIN)]
    python = [py("f", entry=True), py("g", entry=True)]
    assert names(merge_stacks(stack, python, in_libpython)) == ["long_add", "f", "g"]

    astray = [native("deflate_slow", LIBZ), Frame("[unknown]+0x7f00", 0x7F00), native("x", LIBZ)]
    assert names(merge_stacks(astray, python, in_libpython)) == ["deflate_slow", "f", "g"]


def test_the_leaf_frame_is_kept_even_when_it_is_in_no_file():
    jitted = [Frame("[unknown]+0x7f00", 0x7F00), Frame("[unknown]+0x7f80", 0x7F80)]
    python = [py("f", entry=True)]
    assert names(merge_stacks(jitted, python, in_libpython)) == ["[unknown]+0x7f00", "f"]


def test_a_truncated_stack_ends_at_its_marker():
    stack = [
        native("_PyEval_EvalFrameDefault"),
        native("_PyEval_EvalFrameDefault"),
        native("main", MAIN),
    ]
    python = [py("deep", entry=True), PythonFrame(TRUNCATED_FRAME, True)]
    merged = merge_stacks(stack, python, in_libpython)
    assert merged[-1] is TRUNCATED_FRAME
    assert names(merged) == ["deep", TRUNCATED_FRAME.name]


def test_no_python_frames_leave_the_native_stack_alone():
    stack = [native("_PyEval_EvalFrameDefault"), native("main", MAIN)]
    assert merge_stacks(stack, [], in_libpython) == stack


def test_python_frames_come_out_whole_without_any_native_frame():
    python = [py("f"), py("g", entry=True)]
    assert names(merge_stacks([], python, in_libpython)) == ["f", "g"]


def test_past_the_last_block_a_frame_in_no_file_ends_the_stack():
    # 3.11+ runs a whole Python stack in one eval loop: its frame is replaced,
    # and what a walk without frame pointers finds below it is not kept.
    stack = [
        native("_PyEval_EvalFrameDefault"),
        Frame("[unknown]+0x7f00", 0x7F00),
        native("main", MAIN),
    ]
    python = [py("f"), py("<module>", entry=True)]
    assert names(merge_stacks(stack, python, in_libpython)) == ["f", "<module>"]
