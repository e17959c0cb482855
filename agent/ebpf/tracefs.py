"""Make sure tracefs is mounted, so that libbpf can attach tracepoints."""

from __future__ import annotations

import ctypes
import os

from agent.errors import BpfError

__all__ = ["TRACEFS", "ensure_tracefs"]

TRACEFS = "/sys/kernel/tracing"


def ensure_tracefs(path: str = TRACEFS) -> None:
    """Mount tracefs at ``path`` unless its ``events`` folder is already there.

    Minimal hosts and fresh containers often leave it unmounted; libbpf then
    fails to find tracepoint ids with a bare ENOENT.
    """
    if os.path.isdir(os.path.join(path, "events")):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_ulong,
        ctypes.c_void_p,
    ]
    if libc.mount(b"tracefs", path.encode(), b"tracefs", 0, None) != 0:
        raise BpfError("mount(tracefs)", ctypes.get_errno(), f"cannot mount tracefs at {path}")
