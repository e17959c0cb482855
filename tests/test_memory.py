"""Freed C heap memory goes back to the kernel when the agent asks after a collection, and
``emberscope run`` keeps glibc to one malloc arena."""

from __future__ import annotations

import ctypes
import subprocess
import sys

from agent.memory import release_free_memory
from tests.agent import REPO

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


# Four threads malloc and free through ctypes, which lets go of the GIL: they contend for the
# main arena, and glibc gives them arenas of their own unless limited. malloc_stats() then
# writes one "Arena N:" paragraph per arena to stderr.
CONTEND = """
import ctypes, sys, threading
from agent.memory import limit_arenas

if sys.argv[1] == "limit":
    assert limit_arenas()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]

def churn():
    for _ in range(20000):
        libc.free(libc.malloc(256))

threads = [threading.Thread(target=churn) for _ in range(4)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
libc.malloc_stats()
"""


def arenas(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", CONTEND, mode], cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return sum(line.startswith("Arena ") for line in done.stderr.splitlines())


def test_limit_arenas_keeps_contending_threads_in_one_arena():
    assert arenas("unlimited") > 1  # the contention is real
    assert arenas("limit") == 1
