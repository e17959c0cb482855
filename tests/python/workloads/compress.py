"""zlib.compress of a 4 MB pseudo-text buffer, over and over, in compress_work.

Usage: compress.py SECONDS. Prints "ready" once the loop runs. Python 3.8 syntax.
"""

import random
import sys
import time
import zlib

# Words of a small vocabulary in random order: deflate finds matches
# (unlike random bytes) but has work to do (unlike one repeated phrase).
WORDS = "ember scope sample stack frame kernel python thread map probe trace".split()


def build_buffer(size):
    rng = random.Random(7)
    vocabulary = ["".join(rng.sample(word, len(word))) + word for word in WORDS * 30]
    text = " ".join(rng.choices(vocabulary, k=size // 10))
    return text.encode()[:size]


def compress_work(data):
    return len(zlib.compress(data, 6))


def main(seconds):
    data = build_buffer(4 * 1024 * 1024)
    deadline = time.monotonic() + seconds
    print("ready", flush=True)
    while time.monotonic() < deadline:
        compress_work(data)


main(float(sys.argv[1]))
