"""A recursion DEPTH frames of recurse deep, spinning in spin at the bottom.

Usage: recursion.py DEPTH SECONDS. Prints "ready" once spinning. Python 3.8 syntax.
"""

import sys
import time


def spin(seconds):
    deadline = time.monotonic() + seconds
    print("ready", flush=True)
    total = 0
    while time.monotonic() < deadline:
        for i in range(1000):
            total += i


def recurse(depth, seconds):
    if depth == 1:
        spin(seconds)
    else:
        recurse(depth - 1, seconds)


def main(depth, seconds):
    recurse(depth, seconds)


main(int(sys.argv[1]), float(sys.argv[2]))
