"""Two CPU-bound functions in a 70/30 split: the method Worker.step and the
module function churn, with the same loop body, called in a random order of
short calls so that no periodic sampler aliases with the loop.

Usage: ratio.py SECONDS. Prints "ready" once the loop runs. Python 3.8 syntax.
"""

import random
import sys
import time


class Worker:
    def __init__(self):
        self.total = 0

    def step(self, count):
        total = 0
        for i in range(count):
            total = (total + i * i * 7 + (i ^ 5)) % 1000003  # hot: step
        self.total += total


def churn(count):
    total = 0
    for i in range(count):
        total = (total + i * i * 7 + (i ^ 5)) % 1000003  # hot: churn
    return total


def main(seconds):
    worker = Worker()
    rng = random.Random(1)
    deadline = time.monotonic() + seconds
    print("ready", flush=True)
    while time.monotonic() < deadline:
        if rng.random() < 0.7:
            worker.step(300)
        else:
            churn(300)


main(float(sys.argv[1]))
