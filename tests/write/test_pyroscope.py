"""pyroscope.write against a Connect receiver on loopback that decodes with the committed protos."""

from __future__ import annotations

import base64
import gzip
import http.server
import json
import logging
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from agent.config import ComponentOptions, Duration, Graph, Secret
from agent.config.httpclient import BasicAuth, TLSConfig
from agent.pipeline import KINDS
from agent.pprof import ProfileBuilder, profile_pb2
from agent.symbols.frames import Frame
from agent.write import LabeledProfile
from agent.write.push import push_pb2
from agent.write.pyroscope import (
    EndpointOptions,
    PyroscopeWrite,
    PyroscopeWriteArguments,
    series_labels,
)

REPO = Path(__file__).resolve().parents[2]
FAST = {"min_backoff_period": Duration(0.01), "max_backoff_period": Duration(0.05)}


@dataclass
class Answer:
    status: int = 200
    body: bytes = b""
    delay: float = 0.0


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    request: push_pb2.PushRequest
    client_certificate: dict | None = None


@dataclass
class Receiver:
    """What the loopback Pyroscope got, and the answers it gives next (then 200s)."""

    url: str = ""
    answers: list[Answer] = field(default_factory=list)
    requests: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def wait_for(self, count: int, timeout: float = 5.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(self.requests) < count and time.monotonic() < deadline:
            time.sleep(0.005)
        return list(self.requests)


def _handler(receiver: Receiver) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with receiver.lock:
                answer = receiver.answers.pop(0) if receiver.answers else Answer()
            time.sleep(answer.delay)
            if answer.status == 200:
                request = push_pb2.PushRequest.FromString(body)
                peer = getattr(self.connection, "getpeercert", lambda: None)()
                received = Received(self.path, dict(self.headers), request, peer)
                receiver.requests.append(received)
            self.send_response(answer.status)
            self.send_header("Content-Length", str(len(answer.body)))
            self.end_headers()
            self.wfile.write(answer.body)

        def log_message(self, *args: object) -> None:
            pass

    return Handler


def serve(context: ssl.SSLContext | None = None) -> Iterator[Receiver]:
    receiver = Receiver()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(receiver))
    server.daemon_threads = True
    server.block_on_close = False
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    scheme = "https" if context else "http"
    receiver.url = f"{scheme}://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield receiver
    server.shutdown()
    server.server_close()


@pytest.fixture
def pyroscope() -> Iterator[Receiver]:
    yield from serve()


@pytest.fixture
def start():
    """Start components with running threads; stop them all at the end of the test."""
    stops = []

    def start(
        arguments: PyroscopeWriteArguments, stop_timeout: float = 10.0, **keywords
    ) -> PyroscopeWrite:
        options = ComponentOptions(
            "pyroscope.write.test", lambda _: None, {}, threading.Lock(), stop_timeout=stop_timeout
        )
        component = PyroscopeWrite(options, arguments, **keywords)
        stop = threading.Event()
        thread = threading.Thread(target=component.run, args=(stop,), daemon=True)
        thread.start()
        stops.append((stop, thread))
        return component

    yield start
    for stop, thread in stops:
        stop.set()
        thread.join(10)


def write_to(*urls: str, external_labels=None, **options) -> PyroscopeWriteArguments:
    endpoints = [EndpointOptions(url=url, **{**FAST, **options}) for url in urls]
    return PyroscopeWriteArguments(endpoint=endpoints, external_labels=external_labels or {})


def pprof() -> bytes:
    builder = ProfileBuilder(sample_rate=97, time_nanos=1_700_000_000_000_000_000)
    builder.add_sample([Frame("leaf"), Frame("main")], count=3)
    return builder.encode()


def profile(number: int = 0, **labels: str) -> LabeledProfile:
    base = {"__name__": "process_cpu", "service_name": "web", "n": str(number)}
    return LabeledProfile({**base, **labels}, pprof(), 1_700_000_000_000_000_000)


def metric(component: PyroscopeWrite, name: str, url: str, reason: str | None = None) -> float:
    """One endpoint's value of a metric; summed over the drop reasons unless one is given."""
    total = 0.0
    for family in component.registry.collect():
        for sample in family.samples:
            labels = sample.labels
            if sample.name != name or labels.get("endpoint") != url:
                continue
            if reason is None or labels.get("reason") == reason:
                total += sample.value
    return total


def drops(component: PyroscopeWrite, url: str) -> dict[str, float]:
    """Profiles dropped for ``url``, by reason (those never counted left out)."""
    return {
        sample.labels["reason"]: sample.value
        for family in component.registry.collect()
        for sample in family.samples
        if sample.name == "pyroscope_write_dropped_profiles_total"
        and sample.labels["endpoint"] == url
    }


def wait_until(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.005)
    assert condition()


def series(received: Received) -> dict[str, str]:
    (only,) = received.request.series
    return {label.name: label.value for label in only.labels}


def test_a_profile_is_pushed_as_one_connect_series_with_the_gzipped_pprof(pyroscope, start):
    arguments = write_to(pyroscope.url + "/", external_labels={"env": "test", "n": "ext"})
    component = start(arguments)
    sent = profile(__meta_kubernetes_pod_name="p", __delta__="false")
    component.append(sent)
    (received,) = pyroscope.wait_for(1)
    assert received.path == "/push.v1.PusherService/Push"
    assert received.headers["Content-Type"] == "application/proto"
    assert received.headers["Connect-Protocol-Version"] == "1"
    assert received.headers["Connect-Timeout-Ms"] == "10000"
    labels = [(label.name, label.value) for label in received.request.series[0].labels]
    assert labels == [
        ("__delta__", "false"),
        ("__name__", "process_cpu"),
        ("env", "test"),
        ("n", "ext"),
        ("service_name", "web"),
    ]
    (sample,) = received.request.series[0].samples
    assert sample.raw_profile == sent.data and sample.raw_profile[:2] == b"\x1f\x8b"
    decoded = profile_pb2.Profile.FromString(gzip.decompress(sample.raw_profile))
    assert decoded.string_table[decoded.sample_type[0].type] == "cpu"
    url = pyroscope.url + "/"
    wait_until(lambda: metric(component, "pyroscope_write_sent_profiles_total", url) == 1)
    assert metric(component, "pyroscope_write_sent_bytes_total", url) == len(sent.data)
    latency = {"endpoint": url, "type": "push_endpoint"}
    assert component.registry.get_sample_value("pyroscope_write_latency_count", latency) == 1
    assert component.health().state == "healthy"
    assert component.exports() == {"receiver": component}


def test_tenant_headers_and_basic_auth_go_out_as_configured(pyroscope, start, tmp_path):
    password_file = tmp_path / "password"
    password_file.write_text("s3cret\n")
    auth = BasicAuth(username="user", password_file=str(password_file))
    headers = {"X-Scope-OrgID": "team-a", "X-Extra": "1"}
    start(write_to(pyroscope.url, headers=headers, basic_auth=auth)).append(profile())
    (received,) = pyroscope.wait_for(1)
    assert received.headers["X-Scope-OrgID"] == "team-a"
    assert received.headers["X-Extra"] == "1"
    assert received.headers["Authorization"] == "Basic " + base64.b64encode(b"user:s3cret").decode()


@pytest.mark.parametrize("source", ["inline", "file"])
def test_a_bearer_token_is_sent(pyroscope, start, tmp_path, source):
    token_file = tmp_path / "token"
    token_file.write_text("tok-123")
    option = (
        {"bearer_token": Secret("tok-123")}
        if source == "inline"
        else {"bearer_token_file": str(token_file)}
    )
    start(write_to(pyroscope.url, **option)).append(profile())
    (received,) = pyroscope.wait_for(1)
    assert received.headers["Authorization"] == "Bearer tok-123"


def test_invalid_labels_drop_the_profile_with_a_logged_reason(pyroscope, start, caplog):
    component = start(write_to(pyroscope.url))
    component.append(profile(**{"bad-name": "x"}))
    component.append(profile(1))
    (received,) = pyroscope.wait_for(1)
    assert series(received)["n"] == "1"
    assert "invalid label name 'bad-name'" in caplog.text
    assert drops(component, pyroscope.url) == {"invalid_labels": 1}


def test_a_huge_invalid_label_is_cut_in_the_log_and_counted(pyroscope, start, caplog):
    component = start(write_to(pyroscope.url))
    component.append(profile(service_name="s" * 5000, **{"b" * 5000 + "-": "x"}))
    wait_until(lambda: drops(component, pyroscope.url) == {"invalid_labels": 1})
    (line,) = [r.getMessage() for r in caplog.records if "dropped a profile" in r.getMessage()]
    assert len(line) < 400 and "characters)" in line, line
    assert metric(component, "pyroscope_write_dropped_bytes_total", pyroscope.url) == len(pprof())


@pytest.mark.parametrize(
    ("labels", "message"),
    [({}, "at least one label"), ({"a": "\udc80"}, "not valid UTF-8"), ({"": "x"}, "invalid")],
)
def test_series_labels_apply_alloys_rules(labels, message):
    with pytest.raises(ValueError, match=message):
        series_labels(labels, {})


def test_503_twice_then_200_delivers_once_with_two_retries_counted(pyroscope, start):
    pyroscope.answers = [Answer(503), Answer(503)]
    component = start(write_to(pyroscope.url))
    component.append(profile())
    assert len(pyroscope.wait_for(1)) == 1
    wait_until(lambda: metric(component, "pyroscope_write_sent_profiles_total", pyroscope.url))
    assert metric(component, "pyroscope_write_retries_total", pyroscope.url) == 2
    assert metric(component, "pyroscope_write_dropped_profiles_total", pyroscope.url) == 0
    assert component.health().state == "healthy"


def test_429_is_retried(pyroscope, start):
    body = b'{"code":"resource_exhausted","message":"over the rate"}'
    pyroscope.answers = [Answer(429, body)]
    component = start(write_to(pyroscope.url))
    component.append(profile())
    assert len(pyroscope.wait_for(1)) == 1
    wait_until(lambda: metric(component, "pyroscope_write_retries_total", pyroscope.url) == 1)


def test_400_is_not_retried_and_counted_dropped(pyroscope, start):
    body = b'{"code":"invalid_argument","message":"max_label_names_per_series"}'
    pyroscope.answers = [Answer(400, body)]
    component = start(write_to(pyroscope.url))
    sent = profile()
    component.append(sent)
    url = pyroscope.url
    wait_until(lambda: drops(component, url) == {"rejected": 1})
    assert metric(component, "pyroscope_write_dropped_bytes_total", url, "rejected") == len(
        sent.data
    )
    assert metric(component, "pyroscope_write_retries_total", url) == 0
    health = component.health()
    assert health.state == "unhealthy"
    assert "HTTP 400 invalid_argument: max_label_names_per_series" in health.message


# Pyroscope's answer to a profile over its max_profile_size_bytes: the whole label
# set first, then what is wrong.
TOO_BIG = (
    "the profile with labels '{service_name=\"%s\"}' exceeds the size limit "
    "(max_profile_size_byte, actual: 5000000, limit: 4194304)" % ("s" * 5000)
)


@pytest.mark.parametrize(
    "answer",
    [
        Answer(413, b"request entity too large"),
        Answer(400, json.dumps({"code": "invalid_argument", "message": TOO_BIG}).encode()),
    ],
)
def test_a_profile_too_large_for_the_push_api_is_counted_as_such(pyroscope, start, answer):
    pyroscope.answers = [answer]
    component = start(write_to(pyroscope.url))
    component.append(profile())
    wait_until(lambda: drops(component, pyroscope.url) == {"too_large": 1})
    message = component.health().message
    assert len(message) < 400, message  # the 5000 characters of labels are cut out


@pytest.mark.parametrize(
    "stop_timeout, stop_began_s_ago",
    [(0.5, 0), (5, 5)],  # the second: the producers' stop took the whole timeout
    ids=["from its own stop", "from the agent's stop"],
)
def test_what_is_queued_or_waiting_to_retry_past_the_stop_timeout_is_counted_stopped(
    pyroscope, stop_timeout, stop_began_s_ago
):
    pyroscope.answers = [Answer(503)] * 10
    options = ComponentOptions(
        "pyroscope.write.s",
        lambda _: None,
        {},
        threading.Lock(),
        stop_timeout=stop_timeout,
        stop_started=lambda: time.monotonic() - stop_began_s_ago,
    )
    arguments = write_to(
        pyroscope.url, min_backoff_period=Duration(30), max_backoff_period=Duration(30)
    )
    component = PyroscopeWrite(options, arguments)
    stop = threading.Event()
    thread = threading.Thread(target=component.run, args=(stop,))
    thread.start()
    for number in range(3):
        component.append(profile(number))
    wait_until(lambda: "HTTP 503" in component.health().message)  # the first one waits
    stopped = time.monotonic()
    stop.set()
    thread.join(10)
    assert time.monotonic() - stopped < stop_timeout - stop_began_s_ago + 1
    assert drops(component, pyroscope.url) == {"stopped": 3}


def test_a_server_stalling_past_remote_timeout_is_retried(pyroscope, start):
    pyroscope.answers = [Answer(delay=1.0)]
    component = start(write_to(pyroscope.url, remote_timeout=Duration(0.3)))
    component.append(profile())
    wait_until(lambda: "no answer within 0.3s" in component.health().message, timeout=2)
    assert len(pyroscope.wait_for(1, timeout=3)) == 1
    assert metric(component, "pyroscope_write_retries_total", pyroscope.url) == 1


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


def test_connection_refused_is_retried_then_dropped_and_unhealthy(start, caplog):
    url = closed_port_url()
    component = start(write_to(url, max_backoff_retries=3))
    component.append(profile())
    wait_until(lambda: drops(component, url) == {"retries_exhausted": 1})
    assert metric(component, "pyroscope_write_retries_total", url) == 2
    assert component.health().state == "unhealthy"
    assert "cannot connect" in component.health().message
    assert caplog.text.count("cannot connect") == 1  # warned once, not per attempt


def test_a_dead_endpoint_does_not_delay_a_live_one(pyroscope, start):
    stalled = serve()
    dead = next(stalled)
    dead.answers = [Answer(delay=1.5)] * 50
    # stop_timeout: the dead endpoint would hold the stop for the default 10 s
    component = start(
        write_to(dead.url, pyroscope.url, remote_timeout=Duration(1.5)), stop_timeout=1
    )
    began = time.monotonic()
    for number in range(20):
        component.append(profile(number))
    received = pyroscope.wait_for(20, timeout=2)
    assert time.monotonic() - began < 2
    assert [series(r)["n"] for r in received] == [str(n) for n in range(20)]
    assert not dead.requests
    next(stalled, None)


def test_a_full_queue_drops_the_oldest_and_counts(pyroscope):
    options = ComponentOptions("pyroscope.write.q", lambda _: None, {}, threading.Lock())
    component = PyroscopeWrite(options, write_to(pyroscope.url), queue_size=3)
    for number in range(5):
        component.append(profile(number))  # not running yet: nothing leaves the queue
    assert drops(component, pyroscope.url) == {"queue_full": 2}
    stop = threading.Event()
    thread = threading.Thread(target=component.run, args=(stop,))
    thread.start()
    received = pyroscope.wait_for(3)
    stop.set()
    thread.join(5)
    assert [series(r)["n"] for r in received] == ["2", "3", "4"]


def test_the_kubernetes_example_block_delivers_to_the_receiver(pyroscope, start, tmp_path):
    text = (REPO / "deploy" / "k8s.alloy").read_text()
    assert 'url = "http://pyroscope:4040"' in text
    copy = tmp_path / "k8s.alloy"
    copy.write_text(text.replace("http://pyroscope:4040", pyroscope.url))
    graph = Graph.load(copy, KINDS, environ={"HOSTNAME": "node-1"})
    arguments = graph.arguments("pyroscope.write.endpoint")
    assert arguments.endpoint[0].url == pyroscope.url
    start(arguments).append(profile())
    (received,) = pyroscope.wait_for(1)
    assert series(received)["service_name"] == "web"


# TLS: a CA and certificates made with the openssl command line.


def openssl(*arguments: str, cwd: Path) -> None:
    subprocess.run(["openssl", *arguments], cwd=cwd, check=True, capture_output=True)


def make_ca(directory: Path, name: str) -> None:
    openssl(
        *("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
        *("-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "1"),
        *("-subj", f"/CN={name}"),
        cwd=directory,
    )


def make_certificate(directory: Path, ca: str, name: str, usage: str) -> None:
    extensions = directory / f"{name}.ext"
    extensions.write_text(
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
        f"authorityKeyIdentifier=keyid,issuer\nextendedKeyUsage={usage}\n"
    )
    openssl(
        *("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"),
        *("-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}"),
        cwd=directory,
    )
    openssl(
        *("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key"),
        *("-CAcreateserial", "-out", f"{name}.pem", "-days", "1", "-extfile", extensions.name),
        cwd=directory,
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("pki")
    make_ca(directory, "ca")
    make_ca(directory, "other-ca")
    make_certificate(directory, "ca", "server", "serverAuth")
    make_certificate(directory, "ca", "client", "clientAuth")
    return directory


@pytest.fixture
def tls_pyroscope(pki) -> Iterator[Receiver]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki / "ca.pem"))
    context.load_cert_chain(pki / "server.pem", pki / "server.key")
    context.verify_mode = ssl.CERT_OPTIONAL  # checks a client certificate when one is sent
    yield from serve(context)


def test_ca_file_verifies_the_server_and_a_client_certificate_is_presented(
    tls_pyroscope, start, pki
):
    tls = TLSConfig(
        ca_file=str(pki / "ca.pem"),
        cert_file=str(pki / "client.pem"),
        key_file=str(pki / "client.key"),
    )
    start(write_to(tls_pyroscope.url, tls_config=tls)).append(profile())
    (received,) = tls_pyroscope.wait_for(1)
    assert received.client_certificate["subject"] == ((("commonName", "client"),),)


def test_a_wrong_ca_fails_with_a_clear_error(tls_pyroscope, start, pki, caplog):
    tls = TLSConfig(ca_file=str(pki / "other-ca.pem"))
    component = start(write_to(tls_pyroscope.url, tls_config=tls, max_backoff_retries=1))
    component.append(profile())
    wait_until(lambda: component.health().state == "unhealthy")
    assert "CERTIFICATE_VERIFY_FAILED" in component.health().message
    assert "CERTIFICATE_VERIFY_FAILED" in caplog.text
    assert not tls_pyroscope.requests


def test_insecure_skip_verify_connects_without_the_ca(tls_pyroscope, start):
    tls = TLSConfig(insecure_skip_verify=True)
    start(write_to(tls_pyroscope.url, tls_config=tls)).append(profile())
    assert len(tls_pyroscope.wait_for(1)) == 1


def test_secrets_never_reach_logs_or_health(start, caplog):
    url = closed_port_url()
    auth = BasicAuth(username="user", password=Secret("hunter2"))
    component = start(write_to(url, basic_auth=auth, max_backoff_retries=2))
    component.append(profile())
    wait_until(lambda: metric(component, "pyroscope_write_dropped_profiles_total", url) == 1)
    assert "hunter2" not in caplog.text + component.health().message


def test_a_password_in_the_url_is_sent_as_basic_auth_and_shown_nowhere(pyroscope, start, caplog):
    caplog.set_level(logging.DEBUG)  # httpx logs each request's URL at INFO
    url = pyroscope.url.replace("http://", "http://user:p%40ss-w0rd@")
    component = start(write_to(url))
    component.append(profile())
    (received,) = pyroscope.wait_for(1)
    assert (
        received.headers["Authorization"] == "Basic " + base64.b64encode(b"user:p@ss-w0rd").decode()
    )
    wait_until(lambda: metric(component, "pyroscope_write_sent_profiles_total", pyroscope.url))
    exposed = generate_latest(component.registry).decode()
    assert "POST " + pyroscope.url + "/push.v1" in caplog.text  # httpx did log its request
    for text in (caplog.text, exposed, component.health().message):
        assert "w0rd" not in text


def test_a_failing_proxy_with_a_password_is_reported_without_it(start, caplog):
    url = closed_port_url().replace("http://", "http://user:s3cr3t-pw@")
    proxy = closed_port_url().replace("http://", "http://proxy:pr0xy-pw@")
    component = start(write_to(url, proxy_url=proxy, max_backoff_retries=2))
    component.append(profile())
    endpoint = url.replace("user:s3cr3t-pw@", "")
    wait_until(lambda: drops(component, endpoint) == {"retries_exhausted": 1})
    shown = caplog.text + component.health().message + generate_latest(component.registry).decode()
    assert "cannot connect" in shown
    assert "s3cr3t-pw" not in shown and "pr0xy-pw" not in shown
