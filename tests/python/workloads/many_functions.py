"""400 distinct CPU-bound functions, made with exec(), called in turn.

Usage: many_functions.py SECONDS. Prints "ready" once the loop runs. Python 3.8 syntax.
"""

import sys
import time

COUNT = 400
SOURCE = """
def work_{index}(count):
    total = 0
    for i in range(count):
        total += i * {index}
    return total
"""


def make_functions():
    namespace = {}
    for index in range(COUNT):
        exec(compile(SOURCE.format(index=index), "<generated>", "exec"), namespace)
    return [namespace["work_%d" % index] for index in range(COUNT)]


def main(seconds):
    functions = make_functions()
    deadline = time.monotonic() + seconds
    print("ready", flush=True)
    while time.monotonic() < deadline:
        for function in functions:
            function(500)


main(float(sys.argv[1]))
