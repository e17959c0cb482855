"""Where CPython keeps what the unwinder reads, per minor version (x86_64).

3.8–3.12 come from a table checked against the DWARF of pyenv's builds
(``gdb -batch -ex 'ptype/o PyCodeObject' libpython3.X.so``). 3.13 and newer
describe themselves: ``_PyRuntime`` starts with ``_Py_DebugOffsets``, which
:func:`parse_debug_offsets` reads out of the ELF file. What that struct does
not carry (the TSS key's place in ``_PyRuntime``, the shim owner value)
(and ``_PyRuntime.interpreters.main``) comes from :data:`_EXTRA`, per minor
version.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from agent.errors import PythonError

__all__ = ["DEBUG_OFFSETS_SIZE", "PythonOffsets", "offsets_for", "parse_debug_offsets"]

# PyBytesObject: ob_size and ob_sval, the same in every version here.
BYTES_SIZE = 16
BYTES_DATA = 32


@dataclass(frozen=True, slots=True)
class PythonOffsets:
    """Field offsets of one CPython minor version, in bytes.

    ``None`` marks a field the version does not have.
    """

    version: tuple[int, int]
    runtime_tss_key: int
    """``Py_tss_t`` autoTSSkey in ``_PyRuntime``; its ``int _key`` is at +4."""
    tstate_frame: int
    """``frame`` (3.8–3.10), ``cframe`` (3.11, 3.12) or ``current_frame`` (3.13+)."""
    cframe_frame: int | None
    """``_PyCFrame.current_frame`` when ``tstate_frame`` leads to a ``_PyCFrame``."""
    frame_code: int
    frame_previous: int
    frame_instr: int
    """``f_lasti`` (an int) up to 3.10, then ``prev_instr``/``instr_ptr`` (a pointer)."""
    frame_owner: int | None
    frame_is_entry: int | None
    owner_cstack: int | None
    """``FRAME_OWNED_BY_CSTACK``: the owner value of shim frames (3.12+)."""
    code_first_line: int
    code_filename: int
    code_name: int
    """``co_qualname`` from 3.11, ``co_name`` before."""
    code_linetable: int
    """``co_lnotab`` (3.8, 3.9) or ``co_linetable`` (3.10+)."""
    code_adaptive: int | None
    """``co_code_adaptive``, the instructions, from 3.11."""
    unicode_ascii_data: int
    unicode_compact_data: int
    runtime_main_interpreter: int
    """``interpreters.main`` in ``_PyRuntime``."""
    runtime_gil: int | None
    """The ``_gil_runtime_state`` in ``_PyRuntime`` (``ceval.gil``), up to 3.11."""
    interpreter_gil: int | None
    """From 3.12 each interpreter points to its GIL: ``PyInterpreterState.ceval.gil``."""
    gil_last_holder: int
    """In ``_gil_runtime_state``: the thread state that took the GIL last ..."""
    gil_locked: int
    """... and whether the GIL is held now."""

    @property
    def instr_is_pointer(self) -> bool:
        return self.code_adaptive is not None

    @property
    def lasti_unit(self) -> int:
        """Bytes per unit of ``f_lasti``: 3.10 counts code units, 3.8/3.9 bytes."""
        return 2 if self.version == (3, 10) else 1


def _legacy(version: tuple[int, int], tss_key: int, lasti: int, gil: int) -> PythonOffsets:
    """3.8–3.10: heap ``PyFrameObject``s linked by ``f_back``."""
    return PythonOffsets(
        version=version,
        runtime_tss_key=tss_key,
        tstate_frame=24,
        cframe_frame=None,
        frame_code=32,
        frame_previous=24,
        frame_instr=lasti,
        frame_owner=None,
        frame_is_entry=None,
        owner_cstack=None,
        code_first_line=40,
        code_filename=104,
        code_name=112,
        code_linetable=120,
        code_adaptive=None,
        unicode_ascii_data=48,
        unicode_compact_data=72,
        runtime_main_interpreter=40,
        runtime_gil=gil,
        interpreter_gil=None,
        gil_last_holder=8,
        gil_locked=16,
    )


_TABLE = {
    (3, 8): _legacy((3, 8), tss_key=1392, lasti=104, gil=1152),
    (3, 9): _legacy((3, 9), tss_key=584, lasti=104, gil=352),
    (3, 10): _legacy((3, 10), tss_key=584, lasti=96, gil=352),
    (3, 11): PythonOffsets(
        version=(3, 11),
        runtime_tss_key=592,
        tstate_frame=56,
        cframe_frame=8,
        frame_code=32,
        frame_previous=48,
        frame_instr=56,
        frame_owner=69,
        frame_is_entry=68,
        owner_cstack=None,
        code_first_line=72,
        code_filename=112,
        code_name=128,
        code_linetable=136,
        code_adaptive=184,
        unicode_ascii_data=48,
        unicode_compact_data=72,
        runtime_main_interpreter=48,
        runtime_gil=360,
        interpreter_gil=None,
        gil_last_holder=8,
        gil_locked=16,
    ),
    (3, 12): PythonOffsets(
        version=(3, 12),
        runtime_tss_key=1544,
        tstate_frame=56,
        cframe_frame=0,
        frame_code=0,
        frame_previous=8,
        frame_instr=56,
        frame_owner=70,
        frame_is_entry=None,
        owner_cstack=3,
        code_first_line=68,
        code_filename=112,
        code_name=128,
        code_linetable=136,
        code_adaptive=192,
        unicode_ascii_data=40,
        unicode_compact_data=56,
        runtime_main_interpreter=48,
        runtime_gil=None,
        interpreter_gil=384,
        gil_last_holder=8,
        gil_locked=16,
    ),
}

# What _Py_DebugOffsets leaves out, per minor version it describes.
_EXTRA = {(3, 13): {"runtime_tss_key": 2160, "owner_cstack": 3, "runtime_main_interpreter": 640}}

# _Py_DebugOffsets as laid out in 3.13: every member a u64 after the cookie.
DEBUG_OFFSETS_SIZE = 584
_COOKIE = b"xdebugpy"
_DEBUG_FIELDS = {
    # our field: index of the u64 in the struct
    "tstate_frame": 23,  # thread_state.current_frame
    "frame_previous": 29,  # interpreter_frame.previous
    "frame_code": 30,  # interpreter_frame.executable
    "frame_instr": 31,  # interpreter_frame.instr_ptr
    "frame_owner": 33,  # interpreter_frame.owner
    "code_filename": 35,  # code_object.filename
    "code_name": 37,  # code_object.qualname
    "code_linetable": 38,  # code_object.linetable
    "code_first_line": 39,  # code_object.firstlineno
    "code_adaptive": 43,  # code_object.co_code_adaptive
    "unicode_ascii_data": 70,  # unicode_object.asciiobject_size
    "interpreter_gil": 14,  # interpreter_state.ceval_gil
}
# interpreter_state.gil_runtime_state, ..._locked and ..._holder: offsets in
# the interpreter, of its own GIL and of two of its members
_GIL_INDEXES = (15, 17, 18)
_VERSION_INDEX = 1
_FREE_THREADED_INDEX = 2


def offsets_for(version: tuple[int, int]) -> PythonOffsets:
    """The built-in table of a minor version 3.8–3.12; PythonError otherwise."""
    try:
        return _TABLE[version]
    except KeyError:
        minor = f"{version[0]}.{version[1]}"
        raise PythonError(f"CPython {minor} has no built-in offset table") from None


def parse_debug_offsets(data: bytes) -> PythonOffsets:
    """Offsets from the ``_Py_DebugOffsets`` at the start of ``_PyRuntime``.

    ``data`` is at least :data:`DEBUG_OFFSETS_SIZE` bytes of the ``.PyRuntime``
    section. Checks the cookie and refuses versions whose layout of the
    struct is unknown and free-threaded builds (another object header).
    """
    if len(data) < DEBUG_OFFSETS_SIZE:
        raise PythonError(f"_Py_DebugOffsets is {DEBUG_OFFSETS_SIZE} bytes, got {len(data)}")
    if data[:8] != _COOKIE:
        raise PythonError(f"_PyRuntime does not start with the cookie {_COOKIE!r}: {data[:8]!r}")
    words = struct.unpack_from(f"<{DEBUG_OFFSETS_SIZE // 8}Q", data)
    version_hex = words[_VERSION_INDEX]
    version = (version_hex >> 24, (version_hex >> 16) & 0xFF)
    if version not in _EXTRA:
        raise PythonError(
            f"CPython {version[0]}.{version[1]}: the layout of its _Py_DebugOffsets is not known"
        )
    if words[_FREE_THREADED_INDEX]:
        minor = f"{version[0]}.{version[1]}"
        raise PythonError(f"CPython {minor} free-threaded builds are not supported")
    found = {name: words[index] for name, index in _DEBUG_FIELDS.items()}
    # asciiobject_size is where compact ASCII data starts; the compact
    # (non-ASCII) header adds utf8_length and utf8 pointer.
    found["unicode_compact_data"] = found["unicode_ascii_data"] + 16
    gil, locked, holder = (words[index] for index in _GIL_INDEXES)
    return PythonOffsets(
        version=version,
        cframe_frame=None,
        frame_is_entry=None,
        runtime_gil=None,
        gil_last_holder=holder - gil,
        gil_locked=locked - gil,
        **found,
        **_EXTRA[version],
    )
