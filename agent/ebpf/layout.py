"""ctypes mirrors of the structs and enums in bpf/profile.h, field for field."""

from __future__ import annotations

import ctypes
import enum

__all__ = [
    "PERF_MAX_STACK_DEPTH",
    "Control",
    "DropReason",
    "PidConfig",
    "PidEventRecord",
    "PidEventType",
    "PidState",
    "ProfileConfig",
    "SampleKey",
    "StackTrace",
]

PERF_MAX_STACK_DEPTH = 127


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


class PidEventType(enum.IntEnum):
    NEW = 1
    EXEC = 2
    EXIT = 3


class ProfileConfig(ctypes.Structure):
    _fields_ = [
        ("discover_new", ctypes.c_uint8),
        ("collect_user", ctypes.c_uint8),
        ("collect_kernel", ctypes.c_uint8),
        ("_pad", ctypes.c_uint8),
    ]


class PidConfig(ctypes.Structure):
    _fields_ = [
        ("state", ctypes.c_uint8),
        ("collect_user", ctypes.c_uint8),
        ("collect_kernel", ctypes.c_uint8),
        ("_pad", ctypes.c_uint8),
    ]


class SampleKey(ctypes.Structure):
    _fields_ = [
        ("pid", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
        ("user_stack", ctypes.c_uint64),
        ("kernel_stack", ctypes.c_uint64),
    ]


class StackTrace(ctypes.Structure):
    _fields_ = [("ips", ctypes.c_uint64 * PERF_MAX_STACK_DEPTH)]


class PidEventRecord(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_uint32),
        ("pid", ctypes.c_uint32),
        ("ppid", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
    ]


class Control(ctypes.Structure):
    _fields_ = [("active_buffer", ctypes.c_uint32)]
