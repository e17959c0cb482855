"""sorted() with a Python key function, over and over: the key runs in an
eval loop that C (list.sort) called, inside the eval loop of sort_them.

Usage: sort_key.py SECONDS SITE_FILE. Writes to SITE_FILE how a profiler
names the C function of sorted() when it has no symbol (module+0xoffset of
its file), then prints "ready" once the loop runs. Python 3.8 syntax.
"""

import ctypes
import os
import sys
import time


def slow_key(value):
    total = 0
    for i in range(200):
        total += i * value  # hot: key
    return total % 1009


def sort_them(data):
    return sorted(data, key=slow_key)


def c_function_site(builtin):
    """module+0xoffset of a builtin's C function: PyCFunctionObject.m_ml (after
    the object header), then PyMethodDef.ml_meth (after ml_name)."""
    method_def = ctypes.c_void_p.from_address(id(builtin) + 16).value
    address = ctypes.c_void_p.from_address(method_def + 8).value
    with open("/proc/self/maps") as maps:
        for line in maps:
            span, _, offset, _, _, *path = line.split()
            start, end = (int(part, 16) for part in span.split("-"))
            if start <= address < end:
                name = os.path.basename(path[0])
                return "%s+0x%x" % (name, address - start + int(offset, 16))
    raise LookupError("no mapping holds %#x" % address)


def main(seconds, site_file):
    with open(site_file, "w") as out:
        out.write(c_function_site(sorted))
    data = list(range(500))
    deadline = time.monotonic() + seconds
    print("ready", flush=True)
    while time.monotonic() < deadline:
        sort_them(data)


main(float(sys.argv[1]), sys.argv[2])
