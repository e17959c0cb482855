"""The kernel side of sampling: libbpf bindings, perf events and the session."""

from agent.ebpf.layout import (
    DropReason,
    NativeMode,
    PidEventType,
    PidState,
    PyGil,
    PyOffsets,
    PyProc,
    PyStat,
)
from agent.ebpf.session import (
    DEFAULT_OBJECT_PATH,
    PidEvent,
    PythonFrameRecord,
    PythonLineTable,
    PythonStack,
    RawSample,
    Session,
    SessionOptions,
)

__all__ = [
    "DEFAULT_OBJECT_PATH",
    "DropReason",
    "NativeMode",
    "PidEvent",
    "PidEventType",
    "PidState",
    "PyGil",
    "PyOffsets",
    "PyProc",
    "PyStat",
    "PythonFrameRecord",
    "PythonLineTable",
    "PythonStack",
    "RawSample",
    "Session",
    "SessionOptions",
]
