"""discovery.docker against Podman's Docker-compatible API on a Unix socket, with real
containers built from a local busybox root filesystem, and against Docker-shaped summaries."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from agent.config.component import ComponentOptions, Duration
from agent.discovery.containers import parse_container_id
from agent.discovery.docker import DockerArguments, DockerDiscovery, DockerFilter, build_targets

META = "__meta_docker_"


class Recorder:
    """A recording ``on_exports``."""

    def __init__(self) -> None:
        self.calls: list[list[dict[str, str]]] = []
        self.changed = threading.Condition()

    def __call__(self, exports: dict) -> None:
        with self.changed:
            self.calls.append(exports["targets"])
            self.changed.notify_all()

    def wait_for(self, predicate: Callable[[list[dict[str, str]]], bool], timeout: float) -> None:
        with self.changed:
            ok = self.changed.wait_for(lambda: self.calls and predicate(self.calls[-1]), timeout)
        assert ok, f"no matching export within {timeout} s; last: {self.calls[-1:]}"


@pytest.fixture
def running(podman) -> Iterator[Callable[..., tuple[DockerDiscovery, Recorder]]]:
    """Start ``DockerDiscovery.run`` on a thread; stop and join it afterwards."""
    stops: list[tuple[threading.Event, threading.Thread]] = []

    def start(**kwargs) -> tuple[DockerDiscovery, Recorder]:
        recorder = Recorder()
        options = ComponentOptions("discovery.docker.test", recorder, {}, threading.Lock())
        arguments = DockerArguments(
            host=f"unix://{podman.socket}", refresh_interval=Duration(300), **kwargs
        )
        discovery = DockerDiscovery(options, arguments)
        stop = threading.Event()
        thread = threading.Thread(target=discovery.run, args=(stop,), daemon=True)
        thread.start()
        stops.append((stop, thread))
        wait_until(lambda: discovery.health().state == "healthy", 5)
        return discovery, recorder

    yield start
    for stop, thread in stops:
        stop.set()
        thread.join(timeout=5)
        assert not thread.is_alive()


def wait_until(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout} s"
        time.sleep(0.05)


def by_id(targets: list[dict[str, str]], container_id: str) -> dict[str, str] | None:
    return next((t for t in targets if t[META + "container_id"] == container_id), None)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# ---- real containers through Podman ------------------------------------------------------


def test_started_container_appears_by_events_and_matches_its_cgroup(podman, running):
    _, recorder = running()
    name = unique("web")
    container_id = podman.run_container(name, "--label=pyroscope.io/service_name=shop")
    recorder.wait_for(lambda targets: by_id(targets, container_id) is not None, 2.0)

    target = by_id(recorder.calls[-1], container_id)
    assert target[META + "container_name"] == f"/{name}"
    assert target[META + "container_label_pyroscope_io_service_name"] == "shop"
    assert target["__address__"] == ":80"  # --network none: one target, no address
    pid = podman("inspect", "--format={{.State.Pid}}", name)
    cgroup = Path(f"/proc/{pid}/cgroup").read_text()
    assert parse_container_id(cgroup) == target[META + "container_id"]


def test_stopped_container_goes_away_by_events(podman, running):
    name = unique("gone")
    container_id = podman.run_container(name)
    discovery, recorder = running()
    assert by_id(discovery.exports()["targets"], container_id) is not None
    podman("stop", "-t", "0", name)
    recorder.wait_for(lambda targets: by_id(targets, container_id) is None, 2.0)


def test_filter_is_sent_to_the_daemon(podman, running, monkeypatch):
    paths: list[str] = []
    original = httpx.HTTPTransport.handle_request

    def record(transport: httpx.HTTPTransport, request: httpx.Request) -> httpx.Response:
        paths.append(str(request.url))
        return original(transport, request)

    monkeypatch.setattr(httpx.HTTPTransport, "handle_request", record)
    wanted = podman.run_container(unique("wanted"), "--label=profile=true")
    other = podman.run_container(unique("other"))
    discovery, _ = running(filter=[DockerFilter(name="label", values=["profile=true"])])

    targets = discovery.exports()["targets"]
    assert by_id(targets, wanted) is not None and by_id(targets, other) is None
    lists = [urlsplit(url) for url in paths if "/containers/json" in url]
    assert lists and all(url.path.startswith("/v1.") for url in lists)
    assert json.loads(parse_qs(lists[0].query)["filters"][0]) == {"label": {"profile=true": True}}


def test_daemon_gone_keeps_targets_and_turns_unhealthy_then_recovers(podman, running):
    container_id = podman.run_container(unique("kept"))
    discovery, recorder = running()
    assert by_id(discovery.exports()["targets"], container_id) is not None
    calls = len(recorder.calls)
    podman.stop_service()
    try:
        wait_until(lambda: discovery.health().state == "unhealthy", 3)
        assert "podman.sock" in discovery.health().message
        assert by_id(discovery.exports()["targets"], container_id) is not None
        assert len(recorder.calls) == calls
    finally:
        podman.start_service()
    wait_until(lambda: discovery.health().state == "healthy", 12)
    later = podman.run_container(unique("later"))
    recorder.wait_for(lambda targets: by_id(targets, later) is not None, 2.0)


# ---- Docker-shaped summaries -------------------------------------------------------------

BRIDGE = {"Id": "n1", "Name": "bridge", "Scope": "local", "Labels": {"com.x/y": "1"}}
BACKEND = {"Id": "n2", "Name": "backend", "Scope": "swarm", "Internal": True, "Labels": {}}


def container(cid: str, **fields) -> dict:
    summary = {"Id": cid, "Names": [f"/{cid}"], "Labels": {}, "Ports": []}
    summary["HostConfig"] = {"NetworkMode": fields.pop("mode", "bridge")}
    summary["NetworkSettings"] = {"Networks": fields.pop("networks", {})}
    return summary | fields


def test_one_target_per_tcp_port_with_network_labels():
    ports = [
        {"PrivatePort": 8080, "PublicPort": 18080, "IP": "0.0.0.0", "Type": "tcp"},
        {"PrivatePort": 9090, "Type": "tcp"},
        {"PrivatePort": 53, "Type": "udp"},
    ]
    networks = {"bridge": {"NetworkID": "n1", "IPAddress": "172.17.0.2"}}
    summaries = [container("a", Ports=ports, networks=networks)]
    targets = build_targets(summaries, [BRIDGE, BACKEND], DockerArguments(host="unix:///x"))

    assert [t["__address__"] for t in targets] == ["172.17.0.2:8080", "172.17.0.2:9090"]
    first = targets[0]
    assert first[META + "port_public"] == "18080" and first[META + "port_public_ip"] == "0.0.0.0"
    assert META + "port_public" not in targets[1]
    assert first[META + "network_name"] == "bridge" and first[META + "network_internal"] == "false"
    assert first[META + "network_label_com_x_y"] == "1"
    assert first[META + "container_network_mode"] == "bridge"


def test_first_network_shared_network_host_mode_and_no_names():
    networks = {
        "bridge": {"NetworkID": "n1", "IPAddress": "172.17.0.2"},
        "backend": {"NetworkID": "n2", "IPAddress": "10.0.0.2"},
    }
    summaries = [
        container("a", networks=networks),
        container("b", mode="container:a"),
        container("h", mode="host", networks={"host": {"NetworkID": "h", "IPAddress": ""}}),
        container("z", Names=[]),
    ]
    arguments = DockerArguments(host="unix:///x", port=8000, host_networking_host="node-1")
    targets = build_targets(summaries, [BRIDGE, BACKEND], arguments)
    assert [(t[META + "container_id"], t["__address__"]) for t in targets] == [
        ("a", "10.0.0.2:8000"),  # backend sorts first
        ("b", "10.0.0.2:8000"),
        ("h", "node-1"),
    ]
    every = build_targets(
        summaries[:1],
        [BRIDGE, BACKEND],
        DockerArguments(host="unix:///x", match_first_network=False),
    )
    assert [t[META + "network_name"] for t in every] == ["backend", "bridge"]


def test_unknown_host_scheme_is_unhealthy_not_fatal():
    options = ComponentOptions("discovery.docker.test", Recorder(), {}, threading.Lock())
    discovery = DockerDiscovery(options, DockerArguments(host="ssh://node-1"))
    stop = threading.Event()
    thread = threading.Thread(target=discovery.run, args=(stop,), daemon=True)
    thread.start()
    wait_until(lambda: discovery.health().state == "unhealthy", 2)
    assert "unix://" in discovery.health().message
    stop.set()
    thread.join(timeout=2)
    assert not thread.is_alive()
