"""The telemetry server against slow, broken and hostile clients and blocked components,
over real sockets on loopback: bounded threads, timeouts, drops counted and never a traceback."""

from __future__ import annotations

import logging
import resource
import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from prometheus_client import CollectorRegistry

from agent.config import Graph, Health
from agent.telemetry import TelemetryServer, new_registry
from agent.write import FileReceiver
from tests.agent import wait_for

HALF_OPEN = 1000
CLIENT_TIMEOUT = 2.0  # seconds; the agent's default is 5
DROPPED = "emberscope_http_connections_dropped_total"


class Part:
    """A component whose health and debug info wait for ``lock`` when it is held."""

    def __init__(self, lock: threading.Lock, debug_info: object = None) -> None:
        self.lock = lock
        self.info = debug_info

    def health(self) -> Health:
        with self.lock:
            return Health("healthy", "", 1700000000.0)

    def exports(self) -> dict[str, object]:
        return {}

    def debug_info(self) -> object:
        with self.lock:
            return self.info


class PartsGraph:
    def __init__(self, parts: dict[str, Part]) -> None:
        self.parts = parts
        self.started = True

    @property
    def order(self) -> list[str]:
        return list(self.parts)

    def health(self, component_id: str) -> Health:
        return self.parts[component_id].health()

    def arguments(self, component_id: str) -> dict[str, str]:
        return {}

    def components(self) -> list[tuple[str, Part]]:
        return list(self.parts.items())


class BlockingCollector:
    """Collects nothing, after waiting for ``lock``: a scrape of a sampler that holds its lock."""

    def __init__(self, lock: threading.Lock) -> None:
        self.lock = lock

    def collect(self) -> Iterator[object]:
        with self.lock:
            yield from ()


@contextmanager
def serving(registry: CollectorRegistry, graph, **limits) -> Iterator[TelemetryServer]:
    server = TelemetryServer(("127.0.0.1", 0), registry, graph, **limits)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def descriptors() -> Iterator[None]:
    """Room for the 1,000 client sockets and the server's side of them: the soft limit
    raised towards the hard one for the test."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 2 * HALF_OPEN + 256
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is under the {needed} descriptors needed")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture
def agent(tmp_path) -> Iterator[tuple[TelemetryServer, CollectorRegistry]]:
    """The server of a real, started graph and the agent's registry, clients timed out after 2 s."""
    registry = new_registry()
    config = f'pyroscope.file "out" {{\n  directory = "{tmp_path}"\n}}\n'
    graph = Graph.load(config, {"pyroscope.file": FileReceiver}, registry=registry)
    graph.start()
    try:
        with serving(registry, graph, client_timeout=CLIENT_TIMEOUT) as server:
            yield server, registry
    finally:
        graph.stop()


def url(server: TelemetryServer, path: str) -> str:
    return "http://{}:{}".format(*server.address) + path


def timed_get(server: TelemetryServer, path: str) -> tuple[httpx.Response, float]:
    start = time.monotonic()
    answer = httpx.get(url(server, path), timeout=10)
    return answer, time.monotonic() - start


def dropped(registry: CollectorRegistry, reason: str) -> float:
    return registry.get_sample_value(DROPPED, {"reason": reason}) or 0.0


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1])


def server_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("telemetry-")]


def closed_by_server(sock: socket.socket, deadline: float) -> bool:
    """Whether the server closes ``sock`` (FIN or RST) before ``deadline``."""
    sock.settimeout(max(0.01, deadline - time.monotonic()))
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def assert_no_traceback(caplog) -> None:
    assert [r for r in caplog.records if r.exc_info or r.levelno >= logging.WARNING] == []
    assert "Traceback" not in caplog.text


class Ticker:
    """Stands for the sampler: wakes every 10 ms and records the longest wait between wakes."""

    def __init__(self) -> None:
        self.longest = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ticker")

    def __enter__(self) -> Ticker:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(0.01):
            now = time.monotonic()
            self.longest = max(self.longest, now - last)
            last = now


def test_metrics_answer_within_a_second_while_1000_clients_hold_half_a_request(
    descriptors, agent, caplog
):
    server, registry = agent
    caplog.set_level(logging.DEBUG)
    sockets = []
    try:
        with Ticker() as ticker:
            threads, rss_before = threading.active_count(), rss_kib()
            opened = time.monotonic()
            for _ in range(HALF_OPEN):
                sock = socket.create_connection(server.address, timeout=5)
                sockets.append(sock)
                sock.sendall(b"GET /metr")
            opening = time.monotonic() - opened
            latencies = []
            for _ in range(5):
                answer, latency = timed_get(server, "/metrics")
                assert answer.status_code == 200
                assert "emberscope_http_open_connections" in answer.text
                latencies.append(latency)
            threads_during, rss_during = threading.active_count(), rss_kib()
            # The event loop, a probe worker and three answer workers, however many clients.
            assert len(server_threads()) == 5
        deadline = time.monotonic() + CLIENT_TIMEOUT + 3
        closed = sum(closed_by_server(sock, deadline) for sock in sockets)
    finally:
        for sock in sockets:
            sock.close()
    print(
        f"\n{HALF_OPEN} half-open connections opened in {opening:.2f}s;"
        f" /metrics in {min(latencies) * 1000:.0f}-{max(latencies) * 1000:.0f} ms;"
        f" threads {threads} -> {threads_during}; RSS {rss_before // 1024} -> "
        f"{rss_during // 1024} -> {rss_kib() // 1024} MB;"
        f" longest tick {ticker.longest * 1000:.0f} ms;"
        f" dropped: read_timeout {dropped(registry, 'read_timeout'):.0f},"
        f" evicted {dropped(registry, 'evicted'):.0f}"
    )
    assert max(latencies) < 1.0
    assert threads_during == threads
    assert ticker.longest < 0.5
    assert closed == HALF_OPEN
    assert dropped(registry, "read_timeout") + dropped(registry, "evicted") == HALF_OPEN
    assert dropped(registry, "read_timeout") > 0
    assert_no_traceback(caplog)


def test_slow_clients_are_closed_after_the_timeout_and_counted(agent, caplog):
    server, registry = agent
    caplog.set_level(logging.DEBUG)
    with socket.create_connection(server.address, timeout=5) as sock:
        sock.sendall(b"GET /-/ready HTT")
        start = time.monotonic()
        assert closed_by_server(sock, start + CLIENT_TIMEOUT + 2)
        waited = time.monotonic() - start
    assert CLIENT_TIMEOUT - 0.1 < waited < CLIENT_TIMEOUT + 1
    assert dropped(registry, "read_timeout") == 1
    assert_no_traceback(caplog)


def test_a_request_sent_slowly_within_the_timeout_is_answered(agent):
    server, _ = agent
    with socket.create_connection(server.address, timeout=5) as sock:
        for part in (b"GET /-/rea", b"dy HTTP/1.1\r\nHost: x\r\n", b"\r\n"):
            sock.sendall(part)
            time.sleep(0.3)
        assert sock.makefile("rb").readline() == b"HTTP/1.0 200 OK\r\n"


def test_requests_with_bare_newlines_parse_as_http_server_parses_them(agent):
    server, _ = agent
    with socket.create_connection(server.address, timeout=5) as sock:
        sock.sendall(b"GET /-/healthy HTTP/1.0\nAccept: */*\n\n")
        assert sock.makefile("rb").read().endswith(b"All Emberscope components are healthy.\n")


def test_bad_requests_are_answered_by_http_server(agent):
    server, _ = agent
    too_many_headers = b"GET / HTTP/1.0\r\n" + b"X: y\r\n" * 101 + b"\r\n"
    for request, status in [(b"BREW /pot HTTP/1.0\r\n\r\n", b"501"), (too_many_headers, b"431")]:
        with socket.create_connection(server.address, timeout=5) as sock:
            sock.sendall(request)
            assert sock.makefile("rb").readline().split()[1] == status


def test_a_request_head_over_16_kib_is_dropped(agent, caplog):
    server, registry = agent
    caplog.set_level(logging.DEBUG)
    with socket.create_connection(server.address, timeout=5) as sock:
        sock.sendall(b"GET /metrics HTTP/1.0\r\n" + b"X-Filler: " + b"x" * 17000 + b"\r\n")
        assert closed_by_server(sock, time.monotonic() + 2)
    wait_for(lambda: dropped(registry, "too_large") == 1)
    assert_no_traceback(caplog)


def test_connections_reset_by_the_client_are_counted_without_a_traceback(agent, caplog):
    server, registry = agent
    caplog.set_level(logging.DEBUG)
    for _ in range(10):
        sock = socket.create_connection(server.address, timeout=5)
        sock.sendall(b"GET /metr")
        wait_for(lambda: registry.get_sample_value("emberscope_http_open_connections") == 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # RST, not FIN
        wait_for(lambda: registry.get_sample_value("emberscope_http_open_connections") == 0)
    assert dropped(registry, "reset") == 10
    assert_no_traceback(caplog)


def test_answers_to_clients_gone_or_not_reading_are_dropped_without_a_traceback(caplog):
    """A 16 MB answer: to a client that closed at once (broken pipe), and to one that never
    reads (the answer not taken within the client timeout)."""
    caplog.set_level(logging.DEBUG)
    registry = CollectorRegistry()
    graph = PartsGraph({"pyroscope.ebpf.big": Part(threading.Lock(), "x" * (16 << 20))})
    with serving(registry, graph, client_timeout=1.0) as server:
        request = b"GET /api/v0/web/components/pyroscope.ebpf.big HTTP/1.0\r\n\r\n"
        for _ in range(3):
            with socket.create_connection(server.address, timeout=5) as sock:
                sock.sendall(request)
        wait_for(lambda: dropped(registry, "broken_pipe") + dropped(registry, "reset") == 3)
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(server.address)
            sock.sendall(request)
            start = time.monotonic()
            wait_for(lambda: dropped(registry, "write_timeout") == 1)
            assert time.monotonic() - start < 3
    broken, reset = dropped(registry, "broken_pipe"), dropped(registry, "reset")
    print(f"\nanswers to clients gone: broken_pipe {broken:.0f}, reset {reset:.0f}")
    assert dropped(registry, "broken_pipe") >= 1
    assert_no_traceback(caplog)


def test_a_scrape_blocked_on_a_collector_answers_503_in_time_while_probes_answer():
    lock = threading.Lock()
    registry = CollectorRegistry()
    registry.register(BlockingCollector(lock))
    graph = PartsGraph({"pyroscope.ebpf.default": Part(threading.Lock(), {"targets": []})})
    with serving(registry, graph, answer_timeout=0.5) as server:
        with lock:  # the sampler holds its lock for as long as it likes
            for _ in range(5):
                answer, latency = timed_get(server, "/metrics")
                assert answer.status_code == 503
                assert "no answer within 0.5s" in answer.text
                assert latency < 1.0
                answer, latency = timed_get(server, "/-/healthy")
                assert answer.status_code == 200
                assert latency < 0.5
            assert len(server_threads()) == 5
        wait_for(lambda: timed_get(server, "/metrics")[0].status_code == 200)


def test_probes_answer_503_when_health_cannot_be_read_and_the_rest_still_answers():
    lock = threading.Lock()
    graph = PartsGraph({"pyroscope.ebpf.default": Part(lock, {"targets": []})})
    with serving(CollectorRegistry(), graph, answer_timeout=0.5) as server:
        with lock:  # health and debug info wait for a lock the component holds
            for path in ("/-/healthy", "/-/ready", "/api/v0/web/components/pyroscope.ebpf.default"):
                answer, latency = timed_get(server, path)
                assert (answer.status_code, latency < 1.0) == (503, True), path
                assert "no answer within 0.5s: a component is busy or blocked" in answer.text
            assert timed_get(server, "/metrics")[0].status_code == 200
            assert timed_get(server, "/nothing")[0].status_code == 404
        wait_for(lambda: timed_get(server, "/-/healthy")[0].status_code == 200)
        detail = httpx.get(url(server, "/api/v0/web/components/pyroscope.ebpf.default")).json()
        assert detail["debugInfo"] == {"targets": []}


def test_past_max_connections_the_oldest_without_a_request_is_closed(caplog):
    caplog.set_level(logging.DEBUG)
    registry = CollectorRegistry()
    graph = PartsGraph({})
    with serving(registry, graph, client_timeout=30, max_connections=50) as server:
        sockets = [socket.create_connection(server.address, timeout=5) for _ in range(60)]
        try:
            for sock in sockets:
                sock.sendall(b"G")
            assert httpx.get(url(server, "/-/ready")).status_code == 200
            deadline = time.monotonic() + 2
            assert [closed_by_server(sock, deadline) for sock in sockets[:11]] == [True] * 11
            wait_for(lambda: registry.get_sample_value("emberscope_http_open_connections") == 49)
            assert dropped(registry, "evicted") == 11
        finally:
            for sock in sockets:
                sock.close()
    assert_no_traceback(caplog)


def test_past_max_connections_all_waiting_for_answers_a_new_one_is_turned_away():
    lock = threading.Lock()
    registry = CollectorRegistry()
    graph = PartsGraph({"pyroscope.ebpf.default": Part(lock, {"targets": []})})
    with serving(registry, graph, max_connections=5) as server:
        with lock:
            sockets = [socket.create_connection(server.address, timeout=5) for _ in range(5)]
            for sock in sockets:
                sock.sendall(b"GET /api/v0/web/components HTTP/1.0\r\n\r\n")
            wait_for(lambda: registry.get_sample_value("emberscope_http_open_connections") == 5)
            answer, latency = timed_get(server, "/-/healthy")
            assert (answer.status_code, answer.text) == (503, "too many connections\n")
            assert latency < 0.5
            wait_for(lambda: dropped(registry, "busy") == 1)
        for sock in sockets:
            assert sock.makefile("rb").readline() == b"HTTP/1.0 200 OK\r\n"
            sock.close()
