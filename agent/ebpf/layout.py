"""ctypes mirrors of the structs and enums in bpf/profile.h, field for field."""

from __future__ import annotations

import ctypes
import enum

__all__ = [
    "MAX_PY_FRAMES",
    "MAX_STACK_DEPTH",
    "NativeMode",
    "PERF_MAX_STACK_DEPTH",
    "PY_FILE_LEN",
    "PY_FRAME_ENTRY",
    "PY_LINETABLE_LEN",
    "PY_NAME_LEN",
    "PY_NO_OFFSET",
    "PY_STACK_TRUNCATED",
    "STACK_TRUNCATED_IP",
    "Control",
    "DropReason",
    "PidConfig",
    "PidEventRecord",
    "PidEventType",
    "PidState",
    "ProfileConfig",
    "PyCodeLines",
    "PyFrameRecord",
    "PyGil",
    "PyOffsets",
    "PyProc",
    "PyStack",
    "PyStat",
    "PySymbol",
    "PySymbolKey",
    "SampleKey",
    "StackTrace",
    "UnwindMapping",
    "UnwindMappingKey",
    "UnwindRow",
    "UnwindStat",
]

PERF_MAX_STACK_DEPTH = 127
MAX_STACK_DEPTH = 128
STACK_TRUNCATED_IP = 0xFFFF_FFFF_FFFF_FFFE
MAX_PY_FRAMES = 128
PY_NAME_LEN = 96
PY_FILE_LEN = 160
PY_LINETABLE_LEN = 1024
PY_NO_OFFSET = 0xFFFF
TASK_COMM_LEN = 16
CGROUP_NAME_LEN = 96
PY_FRAME_ENTRY = 1
PY_STACK_TRUNCATED = 1


class PidState(enum.IntEnum):
    PENDING = 1
    PROFILE = 2
    IGNORE = 3


class DropReason(enum.IntEnum):
    USER_STACK_MISSING = 0
    STACKS_MAP_FULL = 1
    COUNTS_MAP_FULL = 2
    PID_MAP_FULL = 3
    EVENTS_FULL = 4
    PY_STACKS_MAP_FULL = 5
    PY_READ_FAILED = 6
    UNWIND_FAILED = 7
    USER_STACK_UNREADABLE = 8


class UnwindStat(enum.IntEnum):
    FRAMES_TABLE = 0
    FRAMES_FP = 1
    END_OUTERMOST = 2
    END_FP_CHAIN = 3
    END_NO_MAPPING = 4
    END_NO_ROW = 5
    END_UNSUPPORTED = 6
    END_READ_FAULT = 7
    END_DEPTH = 8
    END_WAITING = 9


class PyStat(enum.IntEnum):
    SAMPLES = 0
    NO_THREAD_STATE = 1
    TRUNCATED = 2
    SYMBOLS_NEW = 3
    LINES_LOST = 4


class PyGil(enum.IntEnum):
    UNKNOWN = 0
    HELD = 1
    RELEASED = 2


class PidEventType(enum.IntEnum):
    NEW = 1
    EXEC = 2
    EXIT = 3
    MAPPINGS = 4


class NativeMode(enum.IntEnum):
    WAITING = 0
    TABLES = 1
    FRAME_POINTERS = 2


class ProfileConfig(ctypes.Structure):
    _fields_ = [
        ("discover_new", ctypes.c_uint8),
        ("collect_user", ctypes.c_uint8),
        ("collect_kernel", ctypes.c_uint8),
        ("python_enabled", ctypes.c_uint8),
        ("native_enabled", ctypes.c_uint8),
    ]


class PidConfig(ctypes.Structure):
    _fields_ = [
        ("state", ctypes.c_uint8),
        ("collect_user", ctypes.c_uint8),
        ("collect_kernel", ctypes.c_uint8),
        ("python", ctypes.c_uint8),
        ("native", ctypes.c_uint8),
        ("_pad", ctypes.c_uint8 * 3),
        ("mappings_asked", ctypes.c_uint32),
    ]


class SampleKey(ctypes.Structure):
    _fields_ = [
        ("pid", ctypes.c_uint32),
        ("gil", ctypes.c_uint32),
        ("user_stack", ctypes.c_uint64),
        ("kernel_stack", ctypes.c_uint64),
        ("python_stack", ctypes.c_uint64),
    ]


class StackTrace(ctypes.Structure):
    _fields_ = [("ips", ctypes.c_uint64 * MAX_STACK_DEPTH)]


class PidEventRecord(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_uint32),
        ("pid", ctypes.c_uint32),
        ("ppid", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
        ("cgroup_id", ctypes.c_uint64),
        ("comm", ctypes.c_char * TASK_COMM_LEN),
        ("cgroup_name", ctypes.c_char * CGROUP_NAME_LEN),
    ]


class Control(ctypes.Structure):
    _fields_ = [("active_buffer", ctypes.c_uint32)]


class PyOffsets(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_uint16)
        for name in (
            "tstate_frame",
            "cframe_frame",
            "frame_code",
            "frame_previous",
            "frame_instr",
            "frame_owner",
            "frame_is_entry",
            "frame_window",
            "code_first_line",
            "code_filename",
            "code_name",
            "code_linetable",
            "code_adaptive",
            "code_window",
            "unicode_ascii_data",
            "unicode_compact_data",
            "gil_last_holder",
            "gil_locked",
        )
    ] + [
        ("owner_cstack", ctypes.c_uint8),
        ("entry_every_frame", ctypes.c_uint8),
    ]


class PyProc(ctypes.Structure):
    _fields_ = [
        ("code_type", ctypes.c_uint64),
        ("gil", ctypes.c_uint64),
        ("tss_key", ctypes.c_uint32),
        ("tsd_base", ctypes.c_uint16),
        ("tsd_stride", ctypes.c_uint16),
        ("tsd_data", ctypes.c_uint16),
        ("_pad", ctypes.c_uint16 * 3),
        ("offsets", PyOffsets),
    ]


class PyFrameRecord(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_uint64),
        ("first_line", ctypes.c_uint32),
        ("lasti", ctypes.c_int32),
    ]


class PyStack(ctypes.Structure):
    _fields_ = [
        ("depth", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("frames", PyFrameRecord * MAX_PY_FRAMES),
        ("frame_flags", ctypes.c_uint8 * MAX_PY_FRAMES),
    ]


class PySymbolKey(ctypes.Structure):
    _fields_ = [
        ("pid", ctypes.c_uint32),
        ("first_line", ctypes.c_uint32),
        ("code", ctypes.c_uint64),
    ]


class PySymbol(ctypes.Structure):
    _fields_ = [
        ("name_len", ctypes.c_uint16),
        ("file_len", ctypes.c_uint16),
        ("name_kind", ctypes.c_uint8),
        ("file_kind", ctypes.c_uint8),
        ("name_truncated", ctypes.c_uint8),
        ("file_truncated", ctypes.c_uint8),
        ("name", ctypes.c_char * PY_NAME_LEN),
        ("file", ctypes.c_char * PY_FILE_LEN),
    ]


class PyCodeLines(ctypes.Structure):
    _fields_ = [
        ("pid", ctypes.c_uint32),
        ("first_line", ctypes.c_uint32),
        ("code", ctypes.c_uint64),
        ("table_len", ctypes.c_uint32),
        ("copied", ctypes.c_uint32),
        ("table", ctypes.c_uint8 * PY_LINETABLE_LEN),
    ]


class UnwindRow(ctypes.Structure):
    _fields_ = [
        ("pc", ctypes.c_uint32),
        ("cfa_type", ctypes.c_uint8),
        ("rbp_offset", ctypes.c_int8),
        ("cfa_offset", ctypes.c_uint16),
    ]


class UnwindMappingKey(ctypes.Structure):
    _fields_ = [
        ("prefixlen", ctypes.c_uint32),
        ("pid", ctypes.c_uint32),
        ("address", ctypes.c_uint64),  # big endian
    ]


class UnwindMapping(ctypes.Structure):
    _fields_ = [
        ("start", ctypes.c_uint64),
        ("end", ctypes.c_uint64),
        ("bias", ctypes.c_uint64),
        ("table_start", ctypes.c_uint32),
        ("table_rows", ctypes.c_uint32),
    ]
