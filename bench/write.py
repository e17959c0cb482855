"""Push throughput of ``pyroscope.write``: profiles per second and CPU per profile.

Pushes ``--count`` copies of a realistic gzipped CPU pprof to a Connect receiver on
loopback that runs in a child process, so ``getrusage(RUSAGE_SELF)`` counts only the
agent's side: label checks, request encoding, queueing, HTTP and metrics.

    .venv/bin/python bench/write.py --count 2000
"""

from __future__ import annotations

import argparse
import http.server
import multiprocessing
import random
import resource
import threading
import time

from agent.config import ComponentOptions
from agent.pprof import ProfileBuilder
from agent.symbols.frames import Frame, MappedFile
from agent.write import LabeledProfile
from agent.write.pyroscope import EndpointOptions, PyroscopeWrite, PyroscopeWriteArguments


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def _serve(port: multiprocessing.Queue) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    port.put(server.server_address[1])
    server.serve_forever()


def build_profile(stacks: int = 80, seed: int = 1) -> bytes:
    """A CPU profile shaped like one container's 15 s: native frames with mappings."""
    rng = random.Random(seed)
    library = MappedFile(0x7F0000000000, 0x7F0000400000, 0, "/usr/lib/libapp.so", "ab" * 20)
    names = [f"namespace::Class{i}::method_{i}(int, std::string const&)" for i in range(250)]
    builder = ProfileBuilder(sample_rate=97, time_nanos=time.time_ns())
    for _ in range(stacks):
        depth = rng.randint(8, 30)
        frames = [
            Frame(rng.choice(names), 0x7F0000000000 + rng.randrange(0x400000), library)
            for _ in range(depth)
        ]
        builder.add_sample(frames, count=rng.randint(1, 20))
    return builder.encode()


def push(count: int, url: str, data: bytes) -> tuple[float, float]:
    """Push ``count`` profiles; return (wall seconds, CPU seconds of this process)."""
    options = ComponentOptions("pyroscope.write.bench", lambda _: None, {}, threading.Lock())
    arguments = PyroscopeWriteArguments(endpoint=[EndpointOptions(url=url)])
    component = PyroscopeWrite(options, arguments, queue_size=count)
    stop = threading.Event()
    thread = threading.Thread(target=component.run, args=(stop,))
    labels = {"__name__": "process_cpu", "service_name": "ebpf/default/app", "pod": "app-0"}
    usage = resource.getrusage(resource.RUSAGE_SELF)
    began = time.monotonic()
    thread.start()
    for number in range(count):
        component.append(LabeledProfile({**labels, "n": str(number)}, data, time.time_ns()))
    sent = ("pyroscope_write_sent_profiles_total", {"endpoint": url})
    while (component.registry.get_sample_value(*sent) or 0) < count:
        time.sleep(0.001)
    wall = time.monotonic() - began
    after = resource.getrusage(resource.RUSAGE_SELF)
    stop.set()
    thread.join()
    cpu = (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000, help="profiles to push")
    count = parser.parse_args().count
    ports: multiprocessing.Queue = multiprocessing.Queue()
    server = multiprocessing.Process(target=_serve, args=(ports,), daemon=True)
    server.start()
    url = f"http://127.0.0.1:{ports.get(timeout=10)}"
    data = build_profile()
    wall, cpu = push(count, url, data)
    server.terminate()
    print(f"profiles: {count} of {len(data)} bytes (gzipped pprof)")
    print(f"wall: {wall:.2f} s, {count / wall:.0f} profiles/s")
    print(f"CPU: {cpu:.2f} s, {cpu * 1000 / count:.3f} ms per profile")


if __name__ == "__main__":
    main()
