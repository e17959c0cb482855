"""The ``discovery.docker`` component: targets from a Docker-compatible Engine API.

Labels and targets as Alloy's, except that a container
without a network still yields one target. Container events trigger a re-list, so targets
follow starts and stops within a second, besides the full refresh every ``refresh_interval``::

    discovery.docker "linux" {
      host = "unix:///var/run/docker.sock"
      filter {
        name   = "label"
        values = ["profile=true"]
      }
    }
"""

from __future__ import annotations

import json
import logging
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from agent.config.component import ArgumentError, ComponentOptions, Duration, Health, block
from agent.config.httpclient import HTTPClientArguments, ssl_context
from agent.discovery.exports import PublishedTargets, TargetsExports
from agent.errors import DiscoveryError

__all__ = ["DockerArguments", "DockerDiscovery", "DockerError", "DockerFilter", "build_targets"]

log = logging.getLogger(__name__)

_META = "__meta_docker_"
_MAX_API_VERSION = (1, 47)  # newest version whose fields we know; the daemon may offer more
_FALLBACK_API_VERSION = (1, 24)  # the moby client's choice when /_ping names none
# Docker's names, plus Podman's ("died", "remove"): Podman filters on its own names.
_EVENTS = ("start", "die", "destroy", "rename", "died", "remove")
_TIMEOUT = 5.0  # seconds for each request, and for connecting the event stream
_TICK = 0.2  # seconds between checks for a wanted refresh
_BACKOFF_FIRST, _BACKOFF_MAX = 0.5, 10.0


@dataclass(frozen=True, kw_only=True)
class DockerFilter:
    """One ``filter`` block: a Docker list filter such as ``label`` or ``name``."""

    name: str
    values: list[str]


@dataclass(frozen=True, kw_only=True)
class DockerArguments(HTTPClientArguments):
    """The arguments of ``discovery.docker``.

    The HTTP client options apply only to ``http://`` and ``https://`` hosts; of them,
    only ``tls_config`` (CA, client certificate, ``insecure_skip_verify``) is used.
    """

    host: str
    port: int = 80  # in __address__ when a container publishes no TCP port
    host_networking_host: str = "localhost"
    refresh_interval: Duration = Duration(60)
    filter: list[DockerFilter] = block(default_factory=list)
    match_first_network: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.refresh_interval <= 0:
            raise ArgumentError("refresh_interval", "must be greater than 0")


class DockerError(DiscoveryError):
    """The Engine API at ``source`` could not be reached or gave an unusable answer."""


class DockerDiscovery:
    """``discovery.docker``: exports ``targets``, one per container, network and TCP port.

    Example::

        discovery = DockerDiscovery(options, DockerArguments(host="unix:///run/docker.sock"))
        threading.Thread(target=discovery.run, args=(stop,)).start()
    """

    Arguments = DockerArguments

    Exports = TargetsExports

    def __init__(self, options: ComponentOptions, arguments: DockerArguments) -> None:
        self._options = options
        self._lock = threading.Lock()
        self._args = arguments
        self._published = PublishedTargets(options)
        self._wanted = threading.Event()  # a refresh is due before the interval ends
        self._restart = threading.Event()  # the arguments changed: open a new client

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self._restart.clear()
            with self._lock:
                arguments = self._args
            self._run_session(arguments, stop)

    def update(self, arguments: DockerArguments) -> None:
        """Any change reconnects and refreshes at once; targets stay until then."""
        with self._lock:
            self._args = arguments
        self._restart.set()

    def exports(self) -> dict[str, Any]:
        return self._published.exports()

    def health(self) -> Health:
        return self._published.health()

    def _run_session(self, arguments: DockerArguments, stop: threading.Event) -> None:
        """Refresh with one client and follow its events until stopped or updated."""
        try:
            client = _EngineClient(arguments)
        except DockerError as exc:
            self._published.set_health("unhealthy", str(exc))
            while not (stop.is_set() or self._restart.is_set()):
                stop.wait(_TICK)
            return
        done = threading.Event()
        events = threading.Thread(
            target=self._follow_events, args=(client, done), name="docker-events", daemon=True
        )
        events.start()
        try:
            self._refresh_until(client, arguments, stop)
        finally:
            done.set()
            client.interrupt()
            events.join(_TIMEOUT)
            client.close()

    def _refresh_until(
        self, client: _EngineClient, arguments: DockerArguments, stop: threading.Event
    ) -> None:
        next_refresh, backoff = 0.0, _BACKOFF_FIRST
        while not (stop.is_set() or self._restart.is_set()):
            if self._wanted.is_set() or time.monotonic() >= next_refresh:
                self._wanted.clear()
                if self._refresh(client, arguments):
                    delay, backoff = float(arguments.refresh_interval), _BACKOFF_FIRST
                else:
                    delay, backoff = backoff, min(backoff * 2, _BACKOFF_MAX)
                next_refresh = time.monotonic() + delay
            stop.wait(_TICK)

    def _follow_events(self, client: _EngineClient, done: threading.Event) -> None:
        """Any container event asks for a re-list; so does a stream that opens or breaks,
        since events may have been missed, or the daemon may be gone."""
        backoff = _BACKOFF_FIRST
        while not done.is_set():
            opened = threading.Event()

            def on_open(opened: threading.Event = opened) -> None:
                opened.set()
                self._wanted.set()

            try:
                for _ in client.follow_events(on_open):
                    self._wanted.set()
            except DockerError as exc:
                log.debug("docker event stream: %s", exc)
            if done.is_set():
                return
            if opened.is_set():
                backoff = _BACKOFF_FIRST
                self._wanted.set()
            done.wait(backoff)
            backoff = min(backoff * 2, _BACKOFF_MAX)

    def _refresh(self, client: _EngineClient, arguments: DockerArguments) -> bool:
        try:
            containers = client.list_containers(arguments.filter)
            networks = client.list_networks()
        except DockerError as exc:
            self._published.set_health("unhealthy", str(exc))
            return False
        targets = build_targets(containers, networks, arguments)
        self._published.set_health(
            "healthy", f"{len(containers)} containers, {len(targets)} targets"
        )
        self._published.publish(targets)
        return True


class _EngineClient:
    """The Engine API calls discovery makes; the only place that sees httpx errors."""

    def __init__(self, arguments: DockerArguments) -> None:
        self._host = arguments.host
        self._http = _open_http(arguments)
        self._version: str | None = None  # negotiated on first use and after each failure
        self._stream_socket: socket.socket | None = None

    def close(self) -> None:
        self._http.close()

    def list_containers(self, filters: list[DockerFilter]) -> list[dict[str, Any]]:
        params = {"filters": json.dumps(_filters_query(filters))} if filters else {}
        return self._get_json("/containers/json", params)

    def list_networks(self) -> list[dict[str, Any]]:
        return self._get_json("/networks", {})

    def follow_events(self, on_open: Callable[[], None]) -> Iterator[str]:
        """Each container event as a raw JSON line, until the stream ends."""
        events = {"type": {"container": True}, "event": dict.fromkeys(_EVENTS, True)}
        timeout = httpx.Timeout(_TIMEOUT, read=None)  # quiet hours are normal
        with self._translate():
            path = self._versioned("/events")
            params = {"filters": json.dumps(events)}
            with self._http.stream("GET", path, params=params, timeout=timeout) as response:
                response.raise_for_status()
                stream = response.extensions.get("network_stream")
                self._stream_socket = stream.get_extra_info("socket") if stream else None
                on_open()
                yield from (line for line in response.iter_lines() if line.strip())

    def interrupt(self) -> None:
        """Wake the thread blocked reading the event stream (closing alone does not)."""
        sock = self._stream_socket
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed

    def _get_json(self, path: str, params: Mapping[str, str]) -> Any:
        with self._translate():
            response = self._http.get(self._versioned(path), params=params)
            response.raise_for_status()
            return response.json()

    def _versioned(self, path: str) -> str:
        if self._version is None:
            response = self._http.get("/_ping")
            response.raise_for_status()
            self._version = _negotiate(response.headers.get("API-Version", ""))
            log.debug("%s: Engine API version %s", self._host, self._version)
        return f"/v{self._version}{path}"

    @contextmanager
    def _translate(self) -> Iterator[None]:
        try:
            yield
        except httpx.HTTPStatusError as exc:
            self._version = None
            reason = f"{exc.request.url.path}: HTTP {exc.response.status_code}"
            raise DockerError(self._host, reason) from exc
        except httpx.HTTPError as exc:
            self._version = None  # another daemon may answer next time
            raise DockerError(self._host, f"{type(exc).__name__}: {exc}") from exc
        except ValueError as exc:
            raise DockerError(self._host, f"invalid JSON answer: {exc}") from exc


def _open_http(arguments: DockerArguments) -> httpx.Client:
    """A client for ``unix://``, ``tcp://``, ``http://`` or ``https://`` hosts."""
    parts = urlsplit(arguments.host)
    timeout = httpx.Timeout(_TIMEOUT)
    if parts.scheme == "unix":
        transport = httpx.HTTPTransport(uds=parts.path)
        # Over a Unix socket the Host header is a placeholder, as in the moby client.
        return httpx.Client(transport=transport, base_url="http://docker", timeout=timeout)
    if parts.scheme == "tcp":
        return httpx.Client(base_url=f"http://{parts.netloc}", timeout=timeout)
    if parts.scheme in ("http", "https"):
        verify: ssl.SSLContext | bool = True
        if parts.scheme == "https":
            verify = ssl_context(arguments.tls_config)
        return httpx.Client(
            base_url=arguments.host,
            timeout=timeout,
            verify=verify,
            follow_redirects=arguments.follow_redirects,
        )
    raise DockerError(arguments.host, "host must start with unix://, tcp://, http:// or https://")


def _negotiate(server_version: str) -> str:
    """The lower of the daemon's version and ours, as the moby client negotiates."""
    try:
        major, minor = (int(part) for part in server_version.split("."))
        version = min((major, minor), _MAX_API_VERSION)
    except ValueError:
        version = _FALLBACK_API_VERSION
    return f"{version[0]}.{version[1]}"


def _filters_query(filters: list[DockerFilter]) -> dict[str, dict[str, bool]]:
    """Docker's filter JSON: each name maps to its values, each value to ``true``."""
    query: dict[str, dict[str, bool]] = {}
    for item in filters:
        query.setdefault(item.name, {}).update(dict.fromkeys(item.values, True))
    return query


def build_targets(
    containers: list[dict[str, Any]], networks: list[dict[str, Any]], arguments: DockerArguments
) -> list[dict[str, str]]:
    """Prometheus ``moby`` targets (§10.4), in container-ID order; a container with no
    network gets one target as if on a network without an address."""
    network_labels = {network["Id"]: _network_labels(network) for network in networks}
    by_id = {container["Id"]: container for container in containers}
    targets: list[dict[str, str]] = []
    for container in sorted(containers, key=lambda c: c["Id"]):
        if not container.get("Names"):
            continue
        common = _container_labels(container)
        for endpoint in _endpoints(container, by_id, arguments.match_first_network) or [{}]:
            labels = {**common, **network_labels.get(endpoint.get("NetworkID", ""), {})}
            targets.extend(_port_targets(container, endpoint, labels, arguments))
    return targets


def _container_labels(container: Mapping[str, Any]) -> dict[str, str]:
    host_config = container.get("HostConfig") or {}
    labels = {
        _META + "container_id": container["Id"],
        _META + "container_name": container["Names"][0],
        _META + "container_network_mode": host_config.get("NetworkMode", ""),
    }
    for key, value in (container.get("Labels") or {}).items():
        labels[_META + "container_label_" + _sanitize(key)] = value
    return labels


def _network_labels(network: Mapping[str, Any]) -> dict[str, str]:
    labels = {
        _META + "network_id": network["Id"],
        _META + "network_name": network.get("Name", ""),
        _META + "network_scope": network.get("Scope", ""),
        _META + "network_internal": _bool(network.get("Internal")),
        _META + "network_ingress": _bool(network.get("Ingress")),
    }
    for key, value in (network.get("Labels") or {}).items():
        labels[_META + "network_label_" + _sanitize(key)] = value
    return labels


def _endpoints(
    container: Mapping[str, Any], by_id: Mapping[str, Mapping[str, Any]], first_only: bool
) -> list[Mapping[str, Any]]:
    """The container's networks, those of the container whose network it shares
    (``container:<id>``, followed along the chain), only the lexically first if asked."""
    networks = (container.get("NetworkSettings") or {}).get("Networks") or {}
    mode = (container.get("HostConfig") or {}).get("NetworkMode", "")
    for _ in range(len(by_id)):  # bounded: a chain cannot be longer, a cycle stops here
        if networks or not mode.startswith("container:"):
            break
        shared = by_id.get(mode.removeprefix("container:"))
        if shared is None:
            break
        networks = (shared.get("NetworkSettings") or {}).get("Networks") or {}
        mode = (shared.get("HostConfig") or {}).get("NetworkMode", "")
    names = sorted(name for name, endpoint in networks.items() if endpoint is not None)
    if first_only and names:
        names = names[:1]
    return [networks[name] for name in names]


def _port_targets(
    container: Mapping[str, Any],
    endpoint: Mapping[str, Any],
    labels: dict[str, str],
    arguments: DockerArguments,
) -> list[dict[str, str]]:
    """One target per TCP port, or one on the fallback port (host networking: its host)."""
    ip = endpoint.get("IPAddress", "")
    targets = []
    for port in container.get("Ports") or []:
        if port.get("Type") != "tcp":
            continue
        target = {**labels, _META + "network_ip": ip}
        target[_META + "port_private"] = str(port["PrivatePort"])
        if port.get("PublicPort", 0) > 0:
            target[_META + "port_public"] = str(port["PublicPort"])
            target[_META + "port_public_ip"] = port.get("IP", "")
        target["__address__"] = _join_host_port(ip, port["PrivatePort"])
        targets.append(target)
    if targets:
        return targets
    network_mode = (container.get("HostConfig") or {}).get("NetworkMode", "")
    address = (
        arguments.host_networking_host
        if network_mode == "host"
        else _join_host_port(ip, arguments.port)
    )
    return [{**labels, _META + "network_ip": ip, "__address__": address}]


def _join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _sanitize(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def _bool(value: object) -> str:
    return "true" if value else "false"
