"""One stack out of a native stack and the Python frames of the same sample.

Each run of CPython's C eval loop (``_PyEval_EvalFrameDefault``) executes a
block of Python frames; the kernel marks the last frame of each block
(``entry``). Where the native stack shows as many eval loop frames as there
are blocks, each eval loop frame is replaced by its block, so C extensions
and the interpreter's own C functions stay where they were called.

Where it does not (an interpreter built without frame pointers, which is the
common case: the native walk stops or goes astray inside it), the native
frames the walk is sure of, from the leaf to the first eval loop frame or to
the first frame of the interpreter itself, and never past an address that
is in no file (where a walk without frame pointers went astray), are put on
top of the whole Python stack. The Python frames always come out whole.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from agent.python.symbols import TRUNCATED_FRAME, PythonFrame
from agent.symbols import Frame

__all__ = ["is_eval_loop", "merge_stacks"]

_EVAL_LOOP = "_PyEval_EvalFrameDefault"


def is_eval_loop(frame: Frame) -> bool:
    """Whether a native frame is the eval loop, including GCC's split-off parts
    (``.cold``, ``.part.0``, ``.constprop.0``)."""
    name = frame.name
    return name == _EVAL_LOOP or name.startswith(_EVAL_LOOP + ".")


def merge_stacks(
    native: Sequence[Frame],
    python: Sequence[PythonFrame],
    in_interpreter: Callable[[Frame], bool],
) -> list[Frame]:
    """The merged user stack, leaf first."""
    if not python:
        return list(native)
    blocks = _blocks(python)
    evals = [index for index, frame in enumerate(native) if is_eval_loop(frame)]
    if len(evals) < len(blocks):
        return [*_sure_leaf_frames(native, in_interpreter), *(p.frame for p in python)]
    merged: list[Frame] = []
    block_iter = iter(blocks)
    placed = 0
    for frame in native:
        block = next(block_iter, None) if is_eval_loop(frame) else None
        if block is not None:
            merged.extend(block)
            placed += 1
        elif placed == len(blocks) and (frame.mapping is None or merged[-1] is TRUNCATED_FRAME):
            # Past the last block: a walk that went astray, or the unknown
            # root side of a truncated stack.
            break
        else:
            merged.append(frame)
    return merged


def _blocks(python: Sequence[PythonFrame]) -> list[list[Frame]]:
    """Python frames split after each entry frame; the last block may lack one."""
    blocks: list[list[Frame]] = [[]]
    for python_frame in python:
        blocks[-1].append(python_frame.frame)
        if python_frame.entry:
            blocks.append([])
    if not blocks[-1]:
        blocks.pop()
    return blocks


def _sure_leaf_frames(
    native: Sequence[Frame], in_interpreter: Callable[[Frame], bool]
) -> list[Frame]:
    leaf: list[Frame] = []
    for frame in native:
        if is_eval_loop(frame) or (leaf and frame.mapping is None):
            break
        leaf.append(frame)
        if in_interpreter(frame):
            break
    return leaf
