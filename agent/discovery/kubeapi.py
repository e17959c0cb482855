"""How ``discovery.kubernetes`` reaches the API server: where it is, how it is trusted and
authenticated, and the two requests it makes (a list, and a watch read line by line).

The requests go through httpx, which the agent loads anyway. The ``kubernetes`` client would
cost about 40 MB of RSS (its models and API classes) for two GET endpoints whose JSON is
parsed here in any case. It is still used, imported on first use, to read a
``kubeconfig_file``: contexts, exec plugins and the other ways a kubeconfig names its
credentials are its job.

Three ways to find the server, as Alloy has them:

- in the cluster (neither argument): ``KUBERNETES_SERVICE_HOST``/``_PORT``, the service
  account's CA, and its token re-read every minute, since the kubelet rotates it;
- ``api_server``, with ``bearer_token``/``bearer_token_file`` and ``tls_config``;
- ``kubeconfig_file``.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

from agent.config.component import ArgumentError
from agent.config.httpclient import TLSConfig, ssl_context
from agent.errors import DiscoveryError

if TYPE_CHECKING:
    from agent.discovery.kubernetes import KubernetesArguments

__all__ = ["ApiClient", "ApiServer", "KubernetesError", "find_api_server"]

_TOKEN_REREAD_S = 60.0  # the kubelet rotates a projected token long before it expires


class KubernetesError(DiscoveryError):
    """The API server is unreachable, refused a request or sent something unusable, or the
    way to reach it is misconfigured. Every httpx, TLS and kubeconfig error is translated
    into it (chained), so none escapes discovery.
    """

    def __init__(self, reason: str) -> None:
        super().__init__("Kubernetes API", reason)

    def __str__(self) -> str:
        return self.reason


class Gone(KubernetesError):
    """410 Gone: the held resourceVersion is too old; only a new list helps."""


@dataclass(frozen=True)
class ApiServer:
    """Where the API server is and how to talk to it."""

    url: str
    verify: ssl.SSLContext | bool
    # The Authorization header's value, asked for at every request (tokens rotate).
    authorization: Callable[[], str | None]


def find_api_server(arguments: KubernetesArguments, service_account_dir: str) -> ApiServer:
    """In-cluster service account by default, else ``kubeconfig_file`` or ``api_server``."""
    try:
        if arguments.kubeconfig_file:
            return _from_kubeconfig(arguments.kubeconfig_file)
        if arguments.api_server:
            return _from_arguments(arguments)
        return _in_cluster(service_account_dir)
    except OSError as exc:  # ssl.SSLError included: a CA or key file that cannot be used
        raise KubernetesError(f"cannot configure the Kubernetes client: {exc}") from exc


def _from_arguments(arguments: KubernetesArguments) -> ApiServer:
    """``api_server`` with the bearer token and TLS options; other HTTP options are ignored."""
    url = arguments.api_server.rstrip("/")
    verify = ssl_context(arguments.tls_config) if url.startswith("https:") else True
    if arguments.bearer_token_file:
        token_file = _TokenFile(arguments.bearer_token_file)
        token_file.read()  # a missing file is a configuration error, reported now
        return ApiServer(url, verify, token_file.authorization)
    header = f"Bearer {arguments.bearer_token}" if arguments.bearer_token else None
    return ApiServer(url, verify, lambda: header)


def _in_cluster(service_account_dir: str) -> ApiServer:
    host = os.environ.get("KUBERNETES_SERVICE_HOST", "")
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "")
    if not (host and port):
        raise KubernetesError(
            "not in a cluster: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set;"
            " set api_server or kubeconfig_file"
        )
    if ":" in host:
        host = f"[{host}]"  # an IPv6 address
    context = ssl_context(TLSConfig(ca_file=os.path.join(service_account_dir, "ca.crt")))
    token_file = _TokenFile(os.path.join(service_account_dir, "token"))
    token_file.read()
    return ApiServer(f"https://{host}:{port}", context, token_file.authorization)


def _from_kubeconfig(path: str) -> ApiServer:
    from kubernetes import client, config  # only this way of configuring loads the client

    configuration = client.Configuration()
    try:
        config.load_kube_config(path, client_configuration=configuration)
    except (config.ConfigException, ValueError) as exc:
        raise KubernetesError(f"kubeconfig_file {path}: {exc}") from exc
    verify: ssl.SSLContext | bool = True
    if configuration.host.startswith("https:"):
        try:
            tls = TLSConfig(
                ca_file=configuration.ssl_ca_cert or "",
                cert_file=configuration.cert_file or "",
                key_file=configuration.key_file or "",
                insecure_skip_verify=not configuration.verify_ssl,
            )
        except ArgumentError as exc:  # a client certificate without its key
            raise KubernetesError(f"kubeconfig_file {path}: {exc}") from exc
        verify = ssl_context(tls)

    def authorization() -> str | None:
        # The client's own header for the kubeconfig's token, built at each call, so that
        # its refresh hook (exec plugins, expiring tokens) runs when it has one.
        setting = configuration.auth_settings().get("BearerToken")
        return setting["value"] if setting else None

    return ApiServer(configuration.host.rstrip("/"), verify, authorization)


class _TokenFile:
    """A bearer token file, read again once a minute."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._header: str | None = None
        self._read_at = -_TOKEN_REREAD_S

    def read(self) -> None:
        with open(self._path, encoding="utf-8") as file:
            token = file.read().strip()
        self._header = f"Bearer {token}" if token else None
        self._read_at = time.monotonic()

    def authorization(self) -> str | None:
        if time.monotonic() - self._read_at >= _TOKEN_REREAD_S:
            try:
                self.read()
            except OSError as exc:
                raise KubernetesError(f"cannot read the token {self._path}: {exc}") from exc
        return self._header


@dataclass(frozen=True)
class Timeouts:
    connect: float
    read: float


class ApiClient:
    """The list and watch requests of one API server, on one pooled connection, for one
    thread; another thread may only ``interrupt()`` it."""

    def __init__(self, server: ApiServer) -> None:
        self._server = server
        self._client = httpx.Client(base_url=server.url, verify=server.verify, trust_env=False)
        self._lock = threading.Lock()
        self._stream: Any = None  # the open watch's network stream, for interrupt()
        self._interrupted = False

    def close(self) -> None:
        self._client.close()

    def get(self, path: str, params: dict[str, str], timeouts: Timeouts) -> dict[str, Any]:
        """One JSON object; ``KubernetesError`` for anything else."""
        with _translated():
            response = self._client.get(
                path, params=params, headers=self._headers(), timeout=_timeout(timeouts)
            )
            _check(response)
            return _object(response.content)

    @contextmanager
    def watch(
        self, path: str, params: dict[str, str], timeouts: Timeouts
    ) -> Iterator[Iterator[dict[str, Any]]]:
        """The watch's events, one JSON object a line, until the server ends the response
        or ``interrupt()`` is called from another thread (before or during the watch)."""
        params = {**params, "watch": "true"}
        with _translated():
            request = self._client.build_request(
                "GET", path, params=params, headers=self._headers(), timeout=_timeout(timeouts)
            )
            response = self._client.send(request, stream=True)
            try:
                if response.status_code >= 300:
                    response.read()
                    _check(response)
                with self._lock:
                    self._stream = response.extensions.get("network_stream")
                    interrupted = self._interrupted
                lines = () if interrupted else response.iter_lines()
                yield (_object(line) for line in lines if line)
            finally:
                with self._lock:
                    self._stream = None
                response.close()

    def interrupt(self) -> None:
        """Ends the open watch, and any later one, at once: its socket is shut down under
        the reader."""
        with self._lock:
            self._interrupted = True
            stream = self._stream
        if stream is None:
            return
        sock = stream.get_extra_info("socket")
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed: the reader ends on its own

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        authorization = self._server.authorization()
        if authorization:
            headers["Authorization"] = authorization
        return headers


def _timeout(timeouts: Timeouts) -> httpx.Timeout:
    return httpx.Timeout(timeouts.read, connect=timeouts.connect)


def _check(response: httpx.Response) -> None:
    if response.status_code == 410:
        raise Gone(f"API server answered 410 Gone: {_status_message(response)}")
    if not 200 <= response.status_code <= 299:
        raise KubernetesError(
            f"API server answered {response.status_code} {response.reason_phrase}:"
            f" {_status_message(response)}"
        )


def _status_message(response: httpx.Response) -> str:
    """The ``message`` of a Status object, else the start of the body."""
    try:
        message = json.loads(response.content).get("message")
    except (ValueError, AttributeError):
        message = None
    return message or response.content[:200].decode("utf-8", "replace")


def _object(text: str | bytes) -> dict[str, Any]:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {type(value).__name__}")
    return value


@contextmanager
def _translated() -> Iterator[None]:
    """The one place where transport and decoding errors become ``KubernetesError``."""
    try:
        yield
    except (httpx.HTTPError, OSError) as exc:
        raise KubernetesError(f"cannot reach the API server: {exc}") from exc
    except ValueError as exc:  # json.JSONDecodeError included
        raise KubernetesError(f"unusable answer from the API server: {exc}") from exc
