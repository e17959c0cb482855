"""The kernel's vDSO, read from the agent's own memory, to name the frames of any
process in it: every process on one kernel maps the same image (``clock_gettime``,
``gettimeofday``, ...), so a frame there is named even after its process exited.

A process whose ``[vdso]`` mapping is not the size of ours (a 32-bit one maps
another image) keeps its frames as offsets.
"""

from __future__ import annotations

import ctypes
import io
import logging
import os

from agent.errors import ProcessError, SymbolError
from agent.symbols.elf import ElfInfo, read_elf
from agent.symbols.procmaps import read_maps

__all__ = ["VDSO_PATH", "read_own_vdso"]

log = logging.getLogger(__name__)

VDSO_PATH = "[vdso]"  # its name in /proc/<pid>/maps
_AT_SYSINFO_EHDR = 33  # include/uapi/linux/auxvec.h: where the vDSO's ELF header is


def read_own_vdso() -> tuple[int, ElfInfo] | None:
    """(size of the mapping, its table) of this process's vDSO, or None when it has none
    or it cannot be read."""
    libc = ctypes.CDLL(None)
    libc.getauxval.restype = ctypes.c_ulong
    libc.getauxval.argtypes = [ctypes.c_ulong]
    start = libc.getauxval(_AT_SYSINFO_EHDR)
    try:
        maps = read_maps(os.getpid())
    except ProcessError:
        return None
    mapping = next((m for m in maps if m.path == VDSO_PATH and m.start == start), None)
    if not start or mapping is None:
        return None
    size = mapping.end - mapping.start
    try:
        return size, read_elf(io.BytesIO(ctypes.string_at(start, size)), VDSO_PATH)
    except SymbolError as exc:
        log.info("the vDSO cannot be read, its frames keep their offsets: %s", exc)
        return None
