"""What the BPF walker needs to know about one Python process (``struct py_proc``)."""

from __future__ import annotations

from agent.ebpf.layout import PY_NO_OFFSET, PyOffsets, PyProc
from agent.python.interpreter import Interpreter
from agent.python.offsets import PythonOffsets

__all__ = ["kernel_config"]

# glibc's pthread_getspecific() for keys below 32: the value of key k is at
# thread pointer + specific_1stblock (784) + 16 * k + 8, for glibc 2.27–2.38+.
_GLIBC_TSD = (0x310, 16, 8)

_POINTER = 8


def kernel_config(interpreter: Interpreter) -> PyProc:
    """The ``py_procs`` value for a process."""
    base, stride, data = _GLIBC_TSD
    return PyProc(
        code_type=interpreter.code_type_address,
        gil=interpreter.gil_address,
        tss_key=interpreter.tss_key,
        tsd_base=base,
        tsd_stride=stride,
        tsd_data=data,
        offsets=_kernel_offsets(interpreter.offsets),
    )


def _kernel_offsets(offsets: PythonOffsets) -> PyOffsets:
    pointers = [offsets.frame_code, offsets.frame_previous, offsets.frame_instr]
    flags = [field for field in (offsets.frame_owner, offsets.frame_is_entry) if field is not None]
    frame_bytes = [*(field + _POINTER for field in pointers), *(field + 1 for field in flags)]
    code_bytes = [
        16,  # ob_type, checked against PyCode_Type
        offsets.code_first_line + 4,
        offsets.code_filename + _POINTER,
        offsets.code_name + _POINTER,
        offsets.code_linetable + _POINTER,
    ]
    return PyOffsets(
        tstate_frame=offsets.tstate_frame,
        cframe_frame=_or_none(offsets.cframe_frame),
        frame_code=offsets.frame_code,
        frame_previous=offsets.frame_previous,
        frame_instr=offsets.frame_instr,
        frame_owner=_or_none(offsets.frame_owner),
        frame_is_entry=_or_none(offsets.frame_is_entry),
        frame_window=max(frame_bytes),
        code_first_line=offsets.code_first_line,
        code_filename=offsets.code_filename,
        code_name=offsets.code_name,
        code_linetable=offsets.code_linetable,
        code_adaptive=_or_none(offsets.code_adaptive),
        code_window=max(code_bytes),
        unicode_ascii_data=offsets.unicode_ascii_data,
        unicode_compact_data=offsets.unicode_compact_data,
        gil_last_holder=offsets.gil_last_holder,
        gil_locked=offsets.gil_locked,
        owner_cstack=offsets.owner_cstack or 0,
        entry_every_frame=offsets.frame_owner is None,
    )


def _or_none(offset: int | None) -> int:
    return PY_NO_OFFSET if offset is None else offset
