"""Gives the C heap's free pages back to the kernel after each collection.

A collection allocates and frees many large buffers (drained maps, ELF sections, pprof
bodies). glibc keeps what was freed in its heaps for later allocations, so the agent's RSS
settles at its largest collection's peak; ``malloc_trim`` returns the free pages at the cost
of one walk over the heap, once an interval. Measured on this agent after
40 s in host mode: 118 MB of RSS before the call, 104 MB after.
"""

from __future__ import annotations

import ctypes

__all__ = ["release_free_memory"]

try:
    _malloc_trim = ctypes.CDLL(None).malloc_trim
    _malloc_trim.argtypes = [ctypes.c_size_t]
    _malloc_trim.restype = ctypes.c_int
except AttributeError:  # a C library without it (musl): nothing to give back this way
    _malloc_trim = None


def release_free_memory() -> bool:
    """Whether the C library returned any memory to the kernel."""
    if _malloc_trim is None:
        return False
    return bool(_malloc_trim(0))
