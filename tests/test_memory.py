"""Freed C heap memory goes back to the kernel when the agent asks after a collection."""

from __future__ import annotations

import ctypes

from agent.memory import release_free_memory

LIBC = ctypes.CDLL(None)
LIBC.malloc.restype = ctypes.c_void_p
LIBC.malloc.argtypes = [ctypes.c_size_t]
LIBC.free.argtypes = [ctypes.c_void_p]
CHUNK = 64 * 1024  # below glibc's mmap threshold: these come from the heap
COUNT = 400


def rss_anon_kib() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    raise AssertionError("no RssAnon in /proc/self/status")


def test_freed_heap_pages_are_returned():
    chunks = [LIBC.malloc(CHUNK) for _ in range(COUNT)]
    assert all(chunks)
    for chunk in chunks:
        ctypes.memset(chunk, 1, CHUNK)  # resident now
    # Everything but the last chunk is freed: the free space sits below it, where glibc's own
    # trimming of the heap's top never reaches.
    for chunk in chunks[:-1]:
        LIBC.free(chunk)
    held = rss_anon_kib()
    try:
        assert release_free_memory()
        released = held - rss_anon_kib()
    finally:
        LIBC.free(chunks[-1])
    freed = (COUNT - 1) * CHUNK // 1024
    assert released >= freed * 0.8, f"{released} KiB returned of {freed} KiB freed"
