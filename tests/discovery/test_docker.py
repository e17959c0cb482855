"""discovery.docker against Podman's Docker-compatible API on a Unix socket, with real
containers built from a local busybox root filesystem, and against Docker-shaped summaries."""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
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

IMAGE = "localhost/emberscope-busybox:test"
BUSYBOX = Path("/bin/busybox")
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


class Podman:
    """The podman command line and its API service, with all state under one directory."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.socket = base / "podman.sock"
        self.prefix = [
            "podman",
            f"--root={base / 'root'}",
            f"--runroot={base / 'run'}",
            f"--tmpdir={base / 'tmp'}",  # the events file, shared by CLI and service
            "--events-backend=file",
            "--storage-driver=vfs",
            "--cgroup-manager=cgroupfs",
            "--runtime=runc",
        ]
        self.service: subprocess.Popen | None = None

    def __call__(self, *args: str) -> str:
        done = subprocess.run([*self.prefix, *args], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, f"podman {' '.join(args)}: {done.stderr.strip()}"
        return done.stdout.strip()

    def start_service(self) -> None:
        command = [*self.prefix, "system", "service", "--time=0", f"unix://{self.socket}"]
        self.service = subprocess.Popen(command, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with httpx.Client(transport=httpx.HTTPTransport(uds=str(self.socket))) as client:
                    if client.get("http://d/_ping").status_code == 200:
                        return
            except httpx.TransportError:
                time.sleep(0.1)
        raise AssertionError("podman system service did not answer on its socket")

    def stop_service(self) -> None:
        if self.service is not None:
            self.service.terminate()
            self.service.wait(timeout=10)
            self.service = None
        self.socket.unlink(missing_ok=True)

    def run_container(self, name: str, *args: str) -> str:
        limits = ("--ulimit=nofile=1024:1024", "--ulimit=nproc=1024:1024")  # no CAP_SYS_RESOURCE
        run = ["run", "-d", "--network=none", *limits, f"--name={name}", *args]
        return self(*run, IMAGE, "/bin/sleep", "1000")


def build_image(podman: Podman) -> None:
    """Import a busybox-only root filesystem: no registry is reachable here."""
    rootfs = podman.base / "rootfs"
    for folder in ("bin", "proc", "sys", "dev", "etc", "tmp"):
        (rootfs / folder).mkdir(parents=True)
    shutil.copy(BUSYBOX, rootfs / "bin" / "busybox")
    (rootfs / "bin" / "sleep").symlink_to("busybox")
    archive = podman.base / "rootfs.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(rootfs, arcname=".")
    podman("import", str(archive), IMAGE)


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podman]:
    missing = [tool for tool in ("podman", "runc") if shutil.which(tool) is None]
    if missing or not BUSYBOX.exists():
        pytest.skip(f"needs podman, runc and busybox-static (missing: {missing or [BUSYBOX]})")
    engine = Podman(tmp_path_factory.mktemp("podman"))
    try:
        build_image(engine)
        engine.start_service()
        yield engine
    finally:
        subprocess.run([*engine.prefix, "rm", "-a", "-f", "-t", "0"], capture_output=True)
        engine.stop_service()


@pytest.fixture
def running(podman: Podman) -> Iterator[Callable[..., tuple[DockerDiscovery, Recorder]]]:
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
