"""zlib.compress on one thread (deflate runs with the GIL released) and a
pure-Python loop on another (it holds the GIL), while the main thread waits.

Usage: gil.py SECONDS. Prints "ready" once both run. Python 3.8 syntax.
"""

import sys
import threading
import time
import zlib

WORDS = "ember scope sample stack frame kernel python thread map probe trace".split()


def build_buffer(size):
    text = " ".join(WORDS[(i * 7) % len(WORDS)] + str(i % 977) for i in range(size // 8))
    return text.encode()[:size]


def compress_loop(deadline):
    data = build_buffer(1 << 20)
    while time.monotonic() < deadline:
        zlib.compress(data, 6)


def spin_loop(deadline):
    total = 0
    while time.monotonic() < deadline:
        for i in range(1000):
            total += i * i


def main(seconds):
    deadline = time.monotonic() + seconds
    threads = [
        threading.Thread(target=compress_loop, args=(deadline,)),
        threading.Thread(target=spin_loop, args=(deadline,)),
    ]
    for thread in threads:
        thread.start()
    print("ready", flush=True)
    for thread in threads:
        thread.join()


main(float(sys.argv[1]))
