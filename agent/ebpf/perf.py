"""perf_event_open(2) through the raw syscall, and the list of online CPUs."""

from __future__ import annotations

import ctypes
import errno as errno_codes
import os

from agent.errors import BpfError

__all__ = ["open_cpu_clock", "parse_cpu_list", "read_online_cpus"]

_SYS_PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241}
_PERF_TYPE_SOFTWARE = 1
_PERF_COUNT_SW_CPU_CLOCK = 0
_PERF_FLAG_FD_CLOEXEC = 1 << 3
_ATTR_FLAG_FREQ = 1 << 10
_ATTR_SIZE = 128  # PERF_ATTR_SIZE_VER7


class _PerfEventAttr(ctypes.Structure):
    """The leading fields of ``struct perf_event_attr`` (linux/perf_event.h)."""

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("size", ctypes.c_uint32),
        ("config", ctypes.c_uint64),
        ("sample_freq", ctypes.c_uint64),  # union with sample_period
        ("sample_type", ctypes.c_uint64),
        ("read_format", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),  # the bitfield word: disabled, inherit, ..., freq
        ("_rest", ctypes.c_uint8 * (_ATTR_SIZE - 48)),
    ]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def open_cpu_clock(cpu: int, frequency: int) -> int | None:
    """Open a software cpu-clock event on ``cpu`` sampling at ``frequency`` Hz.

    Returns the event's fd, or ``None`` when the CPU is offline (ENODEV),
    which callers skip rather than fail on.
    """
    attr = _PerfEventAttr(
        type=_PERF_TYPE_SOFTWARE,
        size=_ATTR_SIZE,
        config=_PERF_COUNT_SW_CPU_CLOCK,
        sample_freq=frequency,
        flags=_ATTR_FLAG_FREQ,
    )
    number = _SYS_PERF_EVENT_OPEN[os.uname().machine]
    fd = _libc.syscall(number, ctypes.byref(attr), -1, cpu, -1, _PERF_FLAG_FD_CLOEXEC)
    if fd >= 0:
        return int(fd)
    code = ctypes.get_errno()
    if code == errno_codes.ENODEV:
        return None
    raise BpfError("perf_event_open", code, f"cpu-clock on CPU {cpu} at {frequency} Hz")


def parse_cpu_list(text: str) -> list[int]:
    """Parse a kernel CPU list such as ``0-3,5,7-8``."""
    cpus: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        first, _, last = part.partition("-")
        try:
            cpus.extend(range(int(first), int(last or first) + 1))
        except ValueError:
            raise ValueError(f"bad CPU list {text.strip()!r}: {part!r} is not N or N-M") from None
    return cpus


def read_online_cpus(path: str = "/sys/devices/system/cpu/online") -> list[int]:
    with open(path) as stream:
        return parse_cpu_list(stream.read())
