"""The agent's HTTP server: ``/metrics``, health, readiness and components as JSON.

The paths and the JSON shape follow Alloy's (``--server.http.listen-addr``,
``/-/healthy``, ``/-/ready``, ``/api/v0/web/components[/<id>]``), so that the
tools pointed at an Alloy agent work here too:

    server = TelemetryServer(parse_listen_addr("127.0.0.1:12345"), registry, graph)
    server.start()
    ...
    server.stop()

It runs in its own threads and only reads: a slow client never holds up sampling.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from agent.config.component import Duration, Health, Secret

__all__ = ["ComponentGraph", "TelemetryServer", "parse_listen_addr", "to_json"]

log = logging.getLogger(__name__)

_COMPONENTS_PATH = "/api/v0/web/components"
_GO_ZERO_TIME = "0001-01-01T00:00:00Z"  # what Alloy shows for a health never updated
_REDACTED = "(redacted)"


class ComponentGraph(Protocol):
    """What the server reads of the running configuration (``agent.config.Graph``)."""

    @property
    def order(self) -> list[str]: ...

    @property
    def started(self) -> bool: ...

    def health(self, component_id: str) -> Health: ...

    def arguments(self, component_id: str) -> Any: ...

    def components(self) -> list[tuple[str, Any]]: ...


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
    """Serves one registry and one component graph until stopped."""

    def __init__(
        self, address: tuple[str, int], registry: CollectorRegistry, graph: ComponentGraph
    ) -> None:
        self.registry = registry
        self.graph = graph
        self._httpd = ThreadingHTTPServer(address, _Handler)
        self._httpd.daemon_threads = True
        self._httpd.telemetry = self  # type: ignore[attr-defined]
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        """Where it listens: the port is the one bound, when 0 was asked for."""
        host, port = self._httpd.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="telemetry-http", daemon=True
        )
        self._thread.start()
        log.info("telemetry server listening on %s:%d", *self.address)

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
        self._httpd.server_close()

    # --- the answers, as (status, content type, body) ---

    def metrics(self) -> tuple[int, str, bytes]:
        return HTTPStatus.OK, CONTENT_TYPE_LATEST, generate_latest(self.registry)

    def healthy(self) -> tuple[int, str, bytes]:
        unhealthy = [
            f"{component_id}: {health.state}: {health.message}"
            for component_id in self.graph.order
            if (health := self.graph.health(component_id)).state != "healthy"
        ]
        if unhealthy:
            body = "unhealthy components:\n" + "\n".join(unhealthy)
            return HTTPStatus.INTERNAL_SERVER_ERROR, "text/plain", body.encode() + b"\n"
        return HTTPStatus.OK, "text/plain", b"All Emberscope components are healthy.\n"

    def ready(self) -> tuple[int, str, bytes]:
        if self.graph.started:
            return HTTPStatus.OK, "text/plain", b"Emberscope is ready.\n"
        return HTTPStatus.SERVICE_UNAVAILABLE, "text/plain", b"Emberscope is not ready.\n"

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


class _Handler(BaseHTTPRequestHandler):
    server_version = "emberscope"

    def do_GET(self) -> None:
        telemetry: TelemetryServer = self.server.telemetry  # type: ignore[attr-defined]
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(*telemetry.metrics())
        elif path == "/-/healthy":
            self._send(*telemetry.healthy())
        elif path == "/-/ready":
            self._send(*telemetry.ready())
        elif path == _COMPONENTS_PATH:
            self._send_json(telemetry.component_list())
        elif path.startswith(_COMPONENTS_PATH + "/"):
            detail = telemetry.component_detail(path.removeprefix(_COMPONENTS_PATH + "/"))
            if detail is None:
                self._send(HTTPStatus.NOT_FOUND, "text/plain", b"component not found\n")
            else:
                self._send_json(detail)
        else:
            self._send(HTTPStatus.NOT_FOUND, "text/plain", b"not found\n")

    def _send_json(self, value: Any) -> None:
        self._send(HTTPStatus.OK, "application/json", json.dumps(value).encode())

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        log.debug(format, *args)
