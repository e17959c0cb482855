"""The agent's HTTP server: ``/metrics``, health, readiness and components as JSON,
and the recent profiles' page (``/profiles/``, see ``profiles.py``) when given one.

The paths and the JSON shape follow Alloy's (``--server.http.listen-addr``,
``/-/healthy``, ``/-/ready``, ``/api/v0/web/components[/<id>]``), so that the
tools pointed at an Alloy agent work here too. ``/-/live`` is ours: the
liveness probe, which fails only when the agent itself is stuck.

    server = TelemetryServer(parse_listen_addr("127.0.0.1:12345"), registry, graph)
    server.start()
    ...
    server.stop()

One thread runs an event loop that holds every connection; a few worker
threads compute the answers. A slow or hostile client costs a socket, never a
thread, and an answer that waits on a busy component is cut short with a 503.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import logging
import queue
import socket
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from agent.config.component import Duration, Health, Secret
from agent.telemetry.metrics import HttpMetrics
from agent.telemetry.profiles import ProfilesPage

__all__ = ["ComponentGraph", "TelemetryServer", "parse_listen_addr", "to_json"]

log = logging.getLogger(__name__)

Answer = tuple[int, str, bytes]  # status, content type, body

_COMPONENTS_PATH = "/api/v0/web/components"
_GO_ZERO_TIME = "0001-01-01T00:00:00Z"  # what Alloy shows for a health never updated
_REDACTED = "(redacted)"
_RELOAD_PATH = "POST /-/reload"  # the one path answered to a POST (see _Exchange.do_POST)
_PROBE_PATHS = frozenset({"/-/healthy", "/-/ready", "/-/live"})  # answered by their own worker

# Connections the kernel queues until the event loop accepts them (capped by
# net.core.somaxconn), and how many the loop accepts at one wake-up: a burst
# waits in the kernel, not in descriptors of ours.
_BACKLOG = 1024
_ACCEPT_BATCH = 128
# Bytes of request line and headers: many times what Prometheus or the kubelet
# send, and a bound on what slow clients pin (the reader buffers up to twice it).
_MAX_HEAD = 16384
_ANSWER_WORKERS = 3  # threads for /metrics and the component API; the probes have one more
_CLIENT_TIMEOUT = 5.0  # seconds a client has to send its request, and again to take the answer
_ANSWER_TIMEOUT = 4.0  # seconds to compute an answer: under the chart's 5 s probe timeout
_MAX_CONNECTIONS = 256  # open at once: a fraction of the 1,024 descriptors a process often gets


class ComponentGraph(Protocol):
    """What the server reads of the running configuration (``agent.config.Graph``)."""

    @property
    def order(self) -> list[str]: ...

    @property
    def started(self) -> bool: ...

    def health(self, component_id: str) -> Health: ...

    def arguments(self, component_id: str) -> Any: ...

    def components(self) -> list[tuple[str, Any]]: ...


class Reloader(Protocol):
    """What ``POST /-/reload`` calls (``agent.pipeline.Agent``)."""

    last_reload_error: str  # "" when the last reload succeeded

    def reload(self) -> str: ...  # "" or the error; the running configuration stays on error


def parse_listen_addr(text: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:12345`` for IPv6) as a (host, port) pair; ValueError if bad."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{text!r} is not host:port")
    return host.removeprefix("[").removesuffix("]"), int(port)


def to_json(value: Any) -> Any:
    """Arguments, exports and debug info as JSON values.

    Secrets are redacted, durations written as Alloy writes them, dataclasses
    become objects, and anything else that is not plain data (a receiver
    passed as a capsule, say) is shown by its type name.
    """
    if isinstance(value, Secret):
        return _REDACTED
    if isinstance(value, Duration):
        return f"{float(value):g}s"
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(key): to_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_json(item) for item in value]
    return type(value).__name__


class TelemetryServer:
    """Serves one registry and one component graph until stopped.

    Connections: a listen backlog of 1,024, at most ``max_connections`` open
    (past that, the one that has waited longest for its request is closed),
    ``client_timeout`` seconds to send a request and again to take its answer.
    Answers: computed by four worker threads (one for the probes), each within
    ``answer_timeout`` seconds or answered 503; requests for the same path
    meanwhile share one computation. Every connection dropped is counted in
    ``emberscope_http_connections_dropped_total`` and logged at DEBUG.
    """

    def __init__(
        self,
        address: tuple[str, int],
        registry: CollectorRegistry,
        graph: ComponentGraph,
        *,
        client_timeout: float = _CLIENT_TIMEOUT,
        answer_timeout: float = _ANSWER_TIMEOUT,
        max_connections: int = _MAX_CONNECTIONS,
        profiles: ProfilesPage | None = None,
        reloader: Reloader | None = None,
    ) -> None:
        self.registry = registry
        self.graph = graph
        self.profiles = profiles  # the recent profiles' page under /profiles/, if served
        self.reloader = reloader
        self._sock = _listen(address)
        self._connections = _Connections(
            self.route, HttpMetrics(registry), client_timeout, answer_timeout, max_connections
        )

    @property
    def address(self) -> tuple[str, int]:
        """Where it listens: the port is the one bound, when 0 was asked for."""
        host, port = self._sock.getsockname()[:2]
        return str(host), int(port)

    def start(self) -> None:
        self._connections.start(self._sock)
        log.info("telemetry server listening on %s:%d", *self.address)

    def stop(self) -> None:
        self._connections.stop()
        self._sock.close()

    def route(self, path: str) -> Callable[[], Answer] | None:
        """What answers ``path``, to run on a worker thread; None: not found.

        Called on the event loop, so it reads only the graph's order, which
        takes no lock.
        """
        if path == "/metrics":
            return self.metrics
        if path == "/-/healthy":
            return self.healthy
        if path == "/-/ready":
            return self.ready
        if path == "/-/live":
            return self.live
        if path == _RELOAD_PATH and self.reloader is not None:
            return self.reload
        if path == _COMPONENTS_PATH:
            return lambda: _json_answer(self.component_list())
        component_id = path.removeprefix(_COMPONENTS_PATH + "/")
        if component_id != path and component_id in self.graph.order:
            return lambda: _json_answer(self.component_detail(component_id))
        if self.profiles is not None:
            return self.profiles.route(path)
        return None

    # --- the answers ---

    def metrics(self) -> Answer:
        return HTTPStatus.OK, CONTENT_TYPE_LATEST, generate_latest(self.registry)

    def reload(self) -> Answer:
        """Read the configuration again: 200, or 400 with the error (the running one stays)."""
        assert self.reloader is not None
        error = self.reloader.reload()
        if error:
            return HTTPStatus.BAD_REQUEST, "text/plain", f"reload failed: {error}\n".encode()
        return HTTPStatus.OK, "text/plain", b"configuration reloaded\n"

    def healthy(self) -> Answer:
        """200 when every component reports itself healthy, else 500 with those that do not."""
        unhealthy = self._unhealthy()
        if unhealthy:
            body = "unhealthy components:\n" + "\n".join(unhealthy)
            return HTTPStatus.INTERNAL_SERVER_ERROR, "text/plain", body.encode() + b"\n"
        return HTTPStatus.OK, "text/plain", b"All Emberscope components are healthy.\n"

    def ready(self) -> Answer:
        """200 once the configuration is loaded (every component started) and the
        sampler runs, else 503. As Alloy's, it does not wait for remote services."""
        if not self.graph.started:
            return HTTPStatus.SERVICE_UNAVAILABLE, "text/plain", b"Emberscope is not ready.\n"
        waiting = self._problems("readiness_problem")
        if self.reloader is not None and self.reloader.last_reload_error:
            waiting.append(f"config: last reload failed: {self.reloader.last_reload_error}")
        if waiting:
            body = "Emberscope is not ready:\n" + "\n".join(waiting)
            return HTTPStatus.SERVICE_UNAVAILABLE, "text/plain", body.encode() + b"\n"
        return HTTPStatus.OK, "text/plain", b"Emberscope is ready.\n"

    def live(self) -> Answer:
        """200 unless a component says it is stuck (its loop makes no progress), else 500.

        A remote dependency that is down (Pyroscope, the API server) makes a
        component unhealthy, never stuck: restarting the agent would not bring
        it back, and would lose what the agent holds. The HTTP server's own
        progress is shown by answering at all, within the probe's timeout.
        """
        stuck = self._problems("liveness_problem")
        if stuck:
            body = "stuck components:\n" + "\n".join(stuck)
            return HTTPStatus.INTERNAL_SERVER_ERROR, "text/plain", body.encode() + b"\n"
        return HTTPStatus.OK, "text/plain", b"Emberscope is live.\n"

    def component_list(self) -> list[dict[str, Any]]:
        return [self._summary(component_id) for component_id in self.graph.order]

    def component_detail(self, component_id: str) -> dict[str, Any] | None:
        if component_id not in self.graph.order:
            return None
        component = dict(self.graph.components()).get(component_id)
        return {
            **self._summary(component_id),
            "arguments": to_json(self.graph.arguments(component_id)),
            "exports": to_json(component.exports()) if component is not None else None,
            "debugInfo": _debug_info(component),
        }

    def _unhealthy(self) -> list[str]:
        return [
            f"{component_id}: {health.state}: {health.message}"
            for component_id in self.graph.order
            if (health := self.graph.health(component_id)).state != "healthy"
        ]

    def _problems(self, method: str) -> list[str]:
        """``id: problem`` of each component whose optional ``method()`` names one."""
        problems = []
        for component_id, component in self.graph.components():
            check = getattr(component, method, None)
            if check is not None and (problem := check()):
                problems.append(f"{component_id}: {problem}")
        return problems

    def _summary(self, component_id: str) -> dict[str, Any]:
        name, _, label = component_id.rpartition(".")
        health = self.graph.health(component_id)
        updated = (
            datetime.fromtimestamp(health.updated, UTC).isoformat().replace("+00:00", "Z")
            if health.updated
            else _GO_ZERO_TIME
        )
        return {
            "id": component_id,
            "localID": component_id,
            "moduleID": "",
            "name": name,
            "label": label,
            "type": "block",
            "health": {"state": health.state, "message": health.message, "updatedTime": updated},
        }


def _json_answer(value: Any) -> Answer:
    if value is None:  # the component went away since the path was routed
        return HTTPStatus.NOT_FOUND, "text/plain", b"component not found\n"
    return HTTPStatus.OK, "application/json", json.dumps(value).encode()


def _debug_info(component: Any) -> Any:
    """The component's own ``debug_info()``, if it has one; a failure is shown, not raised."""
    debug_info = getattr(component, "debug_info", None)
    if debug_info is None:
        return None
    try:
        return to_json(debug_info())
    except Exception as exc:  # a component's bug must not break the page
        log.debug("debug info of %r failed", component, exc_info=True)
        return {"error": str(exc)}


def _listen(address: tuple[str, int]) -> socket.socket:
    """A listening socket on ``address``: IPv6 when the host is an IPv6 address."""
    host, port = address
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=_BACKLOG)


class _Dropped(Exception):
    """Ends a connection early; ``reason`` labels the drop counter."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Connections:
    """The event loop's side: accept, read each request, have it answered, write, close.

    ``start`` and ``stop`` are called from the agent's thread; everything else
    runs on the loop's, so its state needs no lock.
    """

    def __init__(
        self,
        route: Callable[[str], Callable[[], Answer] | None],
        metrics: HttpMetrics,
        client_timeout: float,
        answer_timeout: float,
        max_connections: int,
    ) -> None:
        self._route = route
        self._metrics = metrics
        self._client_timeout = client_timeout
        self._answer_timeout = answer_timeout
        self._max_connections = max_connections
        self._loop = asyncio.new_event_loop()
        self._stopping = asyncio.Event()
        self._open: set[asyncio.Task[None]] = set()
        self._reading: dict[asyncio.Task[None], None] = {}  # no request yet, oldest first
        self._evicted: set[asyncio.Task[None]] = set()
        self._pending: dict[str, asyncio.Future[Answer]] = {}  # answers being computed
        self._probe_workers = _Workers("telemetry-probe", 1)
        self._answer_workers = _Workers("telemetry-answer", _ANSWER_WORKERS)
        self._thread: threading.Thread | None = None

    def start(self, sock: socket.socket) -> None:
        self._probe_workers.start()
        self._answer_workers.start()
        self._loop.set_exception_handler(_log_loop_error)
        self._thread = threading.Thread(
            target=self._loop.run_until_complete,
            args=(self._serve(sock),),
            name="telemetry-http",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
            self._thread.join()
            self._thread = None
            self._probe_workers.close()
            self._answer_workers.close()
        self._loop.close()

    async def _serve(self, sock: socket.socket) -> None:
        server = await asyncio.start_server(
            self._connection, sock=sock, backlog=_ACCEPT_BATCH, limit=_MAX_HEAD
        )
        sock.listen(_BACKLOG)  # start_server listened with its batch size
        await self._stopping.wait()
        server.close()
        for task in self._open:
            task.cancel()
        for pending in self._pending.values():
            pending.cancel()
        await asyncio.gather(*self._open, return_exceptions=True)
        await asyncio.sleep(0)  # the aborted transports close their sockets

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        peer = writer.get_extra_info("peername")
        self._open.add(task)
        self._metrics.open_connections.inc()
        try:
            if self._admit(task):
                await self._exchange(task, reader, writer)
            else:
                busy = _Exchange(b"", peer).answer(503, "text/plain", b"too many connections\n")
                await self._write(writer, busy)
                raise _Dropped("busy")
        except _Dropped as drop:
            self._count_drop(drop.reason, peer)
        except OSError as exc:
            self._count_drop(_reason_of(exc), peer)
        except asyncio.CancelledError:  # evicted, or the server stops
            # Not raised on: start_server reports a connection task that ends
            # cancelled as an error, and this one ends here anyway.
            if task in self._evicted:
                self._count_drop("evicted", peer)
        finally:
            writer.transport.abort()  # a no-op after a clean close
            self._open.discard(task)
            self._reading.pop(task, None)
            self._evicted.discard(task)
            self._metrics.open_connections.dec()

    def _admit(self, task: asyncio.Task[None]) -> bool:
        """Make room for ``task``, closing the connection that has waited longest for
        its request if need be; False when every other one has sent its request."""
        if len(self._open) - len(self._evicted) > self._max_connections:
            if not self._reading:
                return False
            oldest = next(iter(self._reading))
            del self._reading[oldest]
            self._evicted.add(oldest)
            oldest.cancel()
        self._reading[task] = None
        return True

    async def _exchange(
        self, task: asyncio.Task[None], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Read one request and write its answer; raise _Dropped or OSError if that fails."""
        try:
            async with asyncio.timeout(self._client_timeout):
                head = await _read_head(reader)
        except TimeoutError:
            raise _Dropped("read_timeout") from None
        finally:
            self._reading.pop(task, None)
        if not head:
            return  # connected and closed without a word: a TCP probe
        exchange = _Exchange(head, writer.get_extra_info("peername"))
        if exchange.asked is None:  # http.server answered by itself (400, 501...), or not at all
            await self._write(writer, exchange.wfile.getvalue())
        else:
            await self._write(writer, exchange.answer(*await self._answer(exchange.asked)))

    async def _answer(self, path: str) -> Answer:
        """``path``'s answer from a worker, shared with requests for it meanwhile; 503 if late."""
        call = self._route(path)
        if call is None:
            return HTTPStatus.NOT_FOUND, "text/plain", b"not found\n"
        pending = self._pending.get(path)
        if pending is None:
            workers = self._probe_workers if path in _PROBE_PATHS else self._answer_workers
            pending = asyncio.wrap_future(workers.submit(call))
            self._pending[path] = pending
            pending.add_done_callback(lambda _: self._pending.pop(path, None))
        try:
            async with asyncio.timeout(self._answer_timeout):
                return await asyncio.shield(pending)
        except TimeoutError:
            log.debug("no answer to %s within %gs", path, self._answer_timeout)
            body = f"no answer within {self._answer_timeout:g}s: a component is busy or blocked\n"
            return HTTPStatus.SERVICE_UNAVAILABLE, "text/plain", body.encode()
        except Exception as exc:  # a collector's or a component's bug: shown, not raised
            log.warning("answering %s failed: %s", path, exc)
            return HTTPStatus.INTERNAL_SERVER_ERROR, "text/plain", f"{exc}\n".encode()

    async def _write(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        # With no write buffer, drain() returns once the kernel holds every byte,
        # so close() has nothing left to flush to a client that stopped reading.
        writer.transport.set_write_buffer_limits(0)
        writer.write(data)
        try:
            async with asyncio.timeout(self._client_timeout):
                await writer.drain()
        except TimeoutError:
            raise _Dropped("write_timeout") from None
        writer.close()

    def _count_drop(self, reason: str, peer: Any) -> None:
        self._metrics.dropped.labels(reason).inc()
        log.debug("dropped the connection from %s: %s", peer, reason)


async def _read_head(reader: asyncio.StreamReader) -> bytes:
    """The request line and headers through the empty line that ends them, or b""
    if the client closed without a word.

    Lines end as http.client reads them (CRLF, or LF alone), so what is read
    here is a whole head to http.server.
    """
    head = b""
    while True:
        try:
            line = await reader.readline()
        except ValueError:  # a line longer than the reader's limit
            raise _Dropped("too_large") from None
        head += line
        if not line.endswith(b"\n"):  # the end of the stream
            if head:
                raise _Dropped("incomplete")
            return head
        if line in (b"\r\n", b"\n"):
            return head
        if len(head) > _MAX_HEAD:
            raise _Dropped("too_large")


def _reason_of(exc: OSError) -> str:
    if isinstance(exc, BrokenPipeError):
        return "broken_pipe"
    if isinstance(exc, ConnectionError):
        return "reset"
    return "error"


def _log_loop_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The event loop's own errors (no descriptor left to accept with, say) in one
    line each, their traceback at DEBUG."""
    exc = context.get("exception")
    log.warning("telemetry server: %s%s", context.get("message"), f": {exc}" if exc else "")
    log.debug("event loop error: %r", context, exc_info=exc)


class _Exchange(BaseHTTPRequestHandler):
    """One request and its answer in memory, parsed and written by http.server's code.

    The event loop moves the bytes. Parsing may answer by itself (400, 414,
    431, 501); otherwise ``asked`` is the path requested, for ``answer``.
    """

    server_version = "emberscope"

    def __init__(self, head: bytes, client_address: Any) -> None:
        # Not BaseRequestHandler's __init__: there is no socket to read here.
        self.client_address = client_address
        self.rfile = io.BytesIO(head)
        self.wfile = io.BytesIO()
        self.command, self.requestline, self.request_version = "", "", self.protocol_version
        self.asked: str | None = None
        if head:
            self.handle_one_request()

    def do_GET(self) -> None:
        self.asked = self.path.split("?", 1)[0]

    def do_POST(self) -> None:
        """Only ``/-/reload`` takes a POST (the method is part of the path routed); any
        other path answers 501, as the methods no path takes."""
        asked = "POST " + self.path.split("?", 1)[0]
        if asked != _RELOAD_PATH:
            self.send_error(HTTPStatus.NOT_IMPLEMENTED, "Unsupported method ('POST')")
            return
        self.asked = asked

    def answer(self, status: int, content_type: str, body: bytes) -> bytes:
        """Every byte to send: what parsing wrote (a 100 Continue, say), then this answer."""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        return self.wfile.getvalue()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        log.debug(format, *args)


class _Workers:
    """A fixed number of daemon threads that run calls in turn.

    Not a ThreadPoolExecutor: its threads are joined when the interpreter
    exits, so one blocked for good on a component's lock would keep the agent
    from exiting.
    """

    def __init__(self, name: str, count: int) -> None:
        self._calls: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]] | None]
        self._calls = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{n}", daemon=True)
            for n in range(count)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def submit(self, call: Callable[[], Any]) -> Future[Any]:
        future: Future[Any] = Future()
        self._calls.put((future, call))
        return future

    def close(self) -> None:
        """Let each thread end once the call it runs returns."""
        for _ in self._threads:
            self._calls.put(None)

    def _work(self) -> None:
        while (item := self._calls.get()) is not None:
            future, call = item
            if not future.set_running_or_notify_cancel():
                continue  # nobody waits for it any more
            try:
                future.set_result(call())
            except Exception as exc:
                future.set_exception(exc)
