"""Two threads spinning in different functions, spin_a and spin_b, while the
main thread waits for them.

Usage: threads.py SECONDS. Prints "ready" once both run. Python 3.8 syntax.
"""

import sys
import threading
import time


def spin_a(deadline):
    total = 0
    while time.monotonic() < deadline:
        for i in range(1000):
            total += i


def spin_b(deadline):
    total = 0
    while time.monotonic() < deadline:
        for i in range(1000):
            total ^= i


def main(seconds):
    deadline = time.monotonic() + seconds
    threads = [
        threading.Thread(target=spin_a, args=(deadline,)),
        threading.Thread(target=spin_b, args=(deadline,)),
    ]
    for thread in threads:
        thread.start()
    print("ready", flush=True)
    for thread in threads:
        thread.join()


main(float(sys.argv[1]))
