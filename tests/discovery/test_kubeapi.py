"""How ``discovery.kubernetes`` reaches the API server: in the cluster (TLS with the service
account's CA and rotating token), through ``api_server``, and what it says when it cannot."""

from __future__ import annotations

import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from agent.config.component import ComponentOptions
from agent.discovery import kubeapi
from agent.discovery.kubepods import Timings
from agent.discovery.kubernetes import KubernetesArguments, KubernetesDiscovery
from tests.agent import wait_for
from tests.discovery import apiserver
from tests.discovery.apiserver import LoopbackApiServer, _handler, make_pod
from tests.discovery.test_kubernetes import FAST, Recorder, names


class TlsApiServer(LoopbackApiServer):
    """The loopback API server behind TLS, recording each request's Authorization header."""

    def __init__(self, cert: Path, key: Path) -> None:
        super().__init__()
        self.authorizations: list[str | None] = []
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.load_cert_chain(cert, key)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> None:
        api = self

        class Recording(_handler(self)):
            def do_GET(self) -> None:  # noqa: N802
                api.authorizations.append(self.headers.get("Authorization"))
                super().do_GET()

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Recording)
        self._server.socket = self._context.wrap_socket(self._server.socket, server_side=True)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()


def self_signed(folder: Path, name: str) -> tuple[Path, Path]:
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", f"/CN={name}", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture
def tls_server(tmp_path) -> Iterator[TlsApiServer]:
    cert, key = self_signed(tmp_path, "apiserver")
    api = TlsApiServer(cert, key)
    api.start()
    yield api
    if api._server is not None:
        api.stop()


def service_account(folder: Path, ca: Path, token: str) -> Path:
    account = folder / "serviceaccount"
    account.mkdir()
    (account / "ca.crt").write_bytes(ca.read_bytes())
    (account / "token").write_text(token + "\n")
    (account / "namespace").write_text("emberscope\n")
    return account


def run_discovery(
    arguments: KubernetesArguments, account: Path | str = "/nonexistent", timings: Timings = FAST
) -> tuple[KubernetesDiscovery, Recorder, threading.Event]:
    recorder = Recorder()
    options = ComponentOptions("discovery.kubernetes.pods", recorder, {}, threading.Lock())
    component = KubernetesDiscovery(
        options, arguments, timings=timings, service_account_dir=str(account)
    )
    stop = threading.Event()
    threading.Thread(target=component.run, args=(stop,), daemon=True).start()
    return component, recorder, stop


def test_in_cluster_uses_the_service_account_over_tls_and_rereads_its_token(
    tmp_path, tls_server, monkeypatch
):
    tls_server.apply(make_pod("web"))
    account = service_account(tmp_path, tmp_path / "apiserver.crt", "first-token")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(tls_server.port))
    monkeypatch.setattr(kubeapi, "_TOKEN_REREAD_S", 0.0)  # the kubelet rotates it meanwhile
    component, recorder, stop = run_discovery(KubernetesArguments(role="pod"), account)
    try:
        wait_for(lambda: names(recorder) == {"web"})
        assert tls_server.authorizations[0] == "Bearer first-token"
        # as the kubelet rotates it: a whole new file in its place
        (account / "token.new").write_text("rotated-token\n")
        (account / "token.new").replace(account / "token")

        def rotated() -> bool:
            # the next watch request carries the new token; dropped again in case the
            # one dropped first was already on its way with the old token
            tls_server.drop_watches()
            return tls_server.authorizations[-1] == "Bearer rotated-token"

        wait_for(rotated)
        assert component.health().state == "healthy"
    finally:
        stop.set()


def test_a_kubeconfig_over_tls_trusts_its_ca_and_sends_its_token(tmp_path, tls_server):
    tls_server.apply(make_pod("web"))
    kubeconfig = tmp_path / "kubeconfig"
    apiserver.write_kubeconfig(str(kubeconfig), tls_server.url, str(tmp_path / "apiserver.crt"))
    arguments = KubernetesArguments(role="pod", kubeconfig_file=str(kubeconfig))
    component, recorder, stop = run_discovery(arguments)
    try:
        wait_for(lambda: names(recorder) == {"web"})
        assert tls_server.authorizations[0] == "Bearer test-token"
        assert component.health().state == "healthy"
    finally:
        stop.set()
    # Another CA: the server is not trusted, and the component says so.
    other_ca, _ = self_signed(tmp_path, "other")
    apiserver.write_kubeconfig(str(kubeconfig), tls_server.url, str(other_ca))
    component, _, stop = run_discovery(arguments)
    try:
        wait_for(lambda: "CERTIFICATE_VERIFY_FAILED" in component.health().message)
    finally:
        stop.set()


def test_in_cluster_with_a_ca_that_does_not_sign_the_server_is_unhealthy(
    tmp_path, tls_server, monkeypatch
):
    other_ca, _ = self_signed(tmp_path, "other")
    account = service_account(tmp_path, other_ca, "token")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(tls_server.port))
    component, recorder, stop = run_discovery(KubernetesArguments(role="pod"), account)
    try:
        wait_for(lambda: component.health().state == "unhealthy")
        assert "cannot reach the API server" in component.health().message
        assert "CERTIFICATE_VERIFY_FAILED" in component.health().message
        assert tls_server.authorizations == []  # no request got through the handshake
    finally:
        stop.set()


def test_outside_a_cluster_without_a_server_says_what_to_set(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)
    component, _, stop = run_discovery(KubernetesArguments(role="pod"))
    try:
        wait_for(lambda: component.health().state == "unhealthy")
        assert "KUBERNETES_SERVICE_HOST" in component.health().message
        assert "set api_server or kubeconfig_file" in component.health().message
    finally:
        stop.set()


def test_api_server_with_a_missing_token_file_names_it(tmp_path):
    missing = tmp_path / "no-such-token"
    arguments = KubernetesArguments(
        role="pod", api_server="http://127.0.0.1:9", bearer_token_file=str(missing)
    )
    component, _, stop = run_discovery(arguments)
    try:
        wait_for(lambda: component.health().state == "unhealthy")
        assert "cannot configure the Kubernetes client" in component.health().message
        assert str(missing) in component.health().message
    finally:
        stop.set()


def test_stopping_ends_an_open_watch_at_once(tmp_path, monkeypatch):
    """The watch's read timeout is two minutes and the server sends nothing meanwhile;
    stopping must not wait for either."""
    monkeypatch.setattr(apiserver, "_BOOKMARK_INTERVAL", 600.0)
    api = LoopbackApiServer()
    api.start()
    try:
        api.apply(make_pod("web"))
        arguments = KubernetesArguments(role="pod", api_server=api.url, bearer_token="t")
        slow_reads = Timings(watch_read_timeout=120.0)
        component, recorder, stop = run_discovery(arguments, timings=slow_reads)
        wait_for(lambda: names(recorder) == {"web"})
        wait_for(lambda: api.queries("watch"))
        time.sleep(0.2)  # the watch is open and waiting for events
        watchers = list(component._watchers)
        component._stop_watchers()  # joins each watcher for at most 5 s
        stop.set()
        assert watchers and not any(w._thread.is_alive() for w in watchers)
    finally:
        api.stop()
