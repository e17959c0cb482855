"""Each endpoint of the telemetry server, over real HTTP on loopback."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter

from agent.config import ComponentOptions, Duration, Graph, Health, Secret
from agent.pyroscope_ebpf import EbpfComponent
from agent.telemetry import TelemetryServer, parse_listen_addr, to_json
from agent.write import FileReceiver


@dataclass(frozen=True)
class Auth:
    username: str
    password: Secret


@dataclass(frozen=True)
class Arguments:
    url: str
    timeout: Duration
    auth: Auth
    forward_to: list[object]


class Receiver:
    """Passed as a capsule: shown by its type name."""


class Component:
    def __init__(self, health: Health) -> None:
        self.state = health

    def health(self) -> Health:
        return self.state

    def exports(self) -> dict[str, object]:
        return {"receiver": Receiver()}

    def debug_info(self) -> dict[str, object]:
        return {"queue": 3}


class FakeGraph:
    def __init__(self) -> None:
        self.started = False
        self.parts = {
            "pyroscope.write.cloud": Component(Health("healthy", "", 1700000000.0)),
            "discovery.process.local": Component(Health("healthy")),
        }

    @property
    def order(self) -> list[str]:
        return list(self.parts)

    def health(self, component_id: str) -> Health:
        return self.parts[component_id].health()

    def arguments(self, component_id: str) -> Arguments:
        auth = Auth("me", Secret("hunter2"))
        return Arguments("http://x", Duration(10), auth, [Receiver()])

    def components(self) -> list[tuple[str, Component]]:
        return list(self.parts.items())


@pytest.fixture
def graph() -> FakeGraph:
    return FakeGraph()


@pytest.fixture
def client(graph: FakeGraph) -> Iterator[httpx.Client]:
    registry = CollectorRegistry()
    Counter("emberscope_test_total", "A counter of the test.", registry=registry).inc(4)
    server = TelemetryServer(("127.0.0.1", 0), registry, graph)
    server.start()
    host, port = server.address
    try:
        with httpx.Client(base_url=f"http://{host}:{port}") as client:
            yield client
    finally:
        server.stop()


def test_metrics_exposes_the_registry(client):
    answer = client.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain; version=")
    assert "emberscope_test_total 4.0" in answer.text
    assert "# HELP emberscope_test_total A counter of the test." in answer.text


def test_healthy_lists_the_unhealthy_components_with_their_reasons(client, graph):
    assert client.get("/-/healthy").status_code == 200
    graph.parts["discovery.process.local"].state = Health("unhealthy", "cannot read /proc")
    answer = client.get("/-/healthy")
    assert answer.status_code == 500
    assert "discovery.process.local: unhealthy: cannot read /proc" in answer.text
    assert "pyroscope.write.cloud" not in answer.text


def test_ready_once_the_graph_started(client, graph):
    assert client.get("/-/ready").status_code == 503
    graph.started = True
    assert client.get("/-/ready").status_code == 200


class Sampling(Component):
    """A component that says whether it runs and whether it is stuck, as pyroscope.ebpf does."""

    def __init__(self) -> None:
        super().__init__(Health("healthy"))
        self.waiting = "starting"
        self.stuck = ""

    def readiness_problem(self) -> str:
        return self.waiting

    def liveness_problem(self) -> str:
        return self.stuck


def test_ready_while_remote_services_are_down_not_while_sampling_starts(client, graph):
    graph.started = True
    graph.parts["pyroscope.ebpf.all"] = sampling = Sampling()
    graph.parts["pyroscope.write.cloud"].state = Health("unhealthy", "connection refused")
    answer = client.get("/-/ready")
    assert answer.status_code == 503
    assert answer.text == "Emberscope is not ready:\npyroscope.ebpf.all: starting\n"
    sampling.waiting = ""
    assert client.get("/-/ready").status_code == 200


def test_live_fails_only_for_a_stuck_component(client, graph):
    graph.parts["pyroscope.ebpf.all"] = sampling = Sampling()
    graph.parts["pyroscope.write.cloud"].state = Health("unhealthy", "connection refused")
    assert client.get("/-/healthy").status_code == 500
    assert client.get("/-/live").status_code == 200
    sampling.stuck = "no collection round has ended for 41 s"
    answer = client.get("/-/live")
    assert answer.status_code == 500
    assert answer.text == (
        "stuck components:\npyroscope.ebpf.all: no collection round has ended for 41 s\n"
    )


def test_components_are_listed_in_the_shape_of_alloys_api(client):
    listed = client.get("/api/v0/web/components").json()
    assert [c["localID"] for c in listed] == ["pyroscope.write.cloud", "discovery.process.local"]
    first = listed[0]
    assert first["id"] == "pyroscope.write.cloud"
    assert (first["name"], first["label"]) == ("pyroscope.write", "cloud")
    assert first["health"] == {
        "state": "healthy",
        "message": "",
        "updatedTime": "2023-11-14T22:13:20Z",
    }
    assert listed[1]["health"]["updatedTime"] == "0001-01-01T00:00:00Z"


def test_a_component_shows_redacted_arguments_exports_and_debug_info(client):
    detail = client.get("/api/v0/web/components/pyroscope.write.cloud").json()
    assert detail["arguments"] == {
        "url": "http://x",
        "timeout": "10s",
        "auth": {"username": "me", "password": "(redacted)"},
        "forward_to": ["Receiver"],
    }
    assert detail["exports"] == {"receiver": "Receiver"}
    assert detail["debugInfo"] == {"queue": 3}
    assert "hunter2" not in client.get("/api/v0/web/components/pyroscope.write.cloud").text


def test_unknown_paths_and_components_are_not_found(client):
    assert client.get("/api/v0/web/components/pyroscope.ebpf.nope").status_code == 404
    assert client.get("/nothing").status_code == 404


def test_ebpf_debug_info_lists_its_targets_before_the_sampler_runs():
    options = ComponentOptions("pyroscope.ebpf.default", lambda _: None, {}, threading.Lock())
    targets = [{"__process_pid__": "7", "service_name": "api"}]
    ebpf = EbpfComponent(options, EbpfComponent.Arguments(targets=targets, forward_to=[]))
    info = to_json(ebpf.debug_info())
    assert info["targets"] == [
        {
            "labels": {
                "__name__": "process_cpu",
                "__process_pid__": "7",
                "service_name": "api",
            },
            "profiled": False,
        }
    ]


def test_a_real_graph_is_ready_after_start_and_passes_the_registry(tmp_path):
    registry = CollectorRegistry()
    config = f'pyroscope.file "out" {{\n  directory = "{tmp_path}"\n}}\n'
    graph = Graph.load(config, {"pyroscope.file": FileReceiver}, registry=registry)
    server = TelemetryServer(("127.0.0.1", 0), registry, graph)
    server.start()
    url = "http://{}:{}".format(*server.address)
    try:
        assert httpx.get(url + "/-/ready").status_code == 503
        graph.start()
        assert httpx.get(url + "/-/ready").status_code == 200
        detail = httpx.get(url + "/api/v0/web/components/pyroscope.file.out").json()
        assert detail["arguments"]["directory"] == str(tmp_path)
        assert detail["exports"] == {"receiver": "FileReceiver"}
    finally:
        graph.stop()
        server.stop()


def test_an_ipv6_loopback_address_is_served(graph):
    try:
        server = TelemetryServer(("::1", 0), CollectorRegistry(), graph)
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    server.start()
    try:
        assert httpx.get(f"http://[::1]:{server.address[1]}/-/healthy").status_code == 200
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("text", "address"),
    [("127.0.0.1:12345", ("127.0.0.1", 12345)), ("[::1]:0", ("::1", 0)), (":80", ("", 80))],
)
def test_listen_addresses_parse_as_alloy_writes_them(text, address):
    assert parse_listen_addr(text) == address


@pytest.mark.parametrize("text", ["12345", "host:port", "h:70000"])
def test_bad_listen_addresses_are_refused(text):
    with pytest.raises(ValueError, match="host:port"):
        parse_listen_addr(text)
