"""The ``pyroscope.write`` component: each profile pushed to every endpoint of Pyroscope.

Arguments have Alloy's names, defaults and checks::

    pyroscope.write "staging" {
      endpoint {
        url     = "http://pyroscope:4040"
        headers = { "X-Scope-OrgID" = "team-a" }
      }
      external_labels = { env = "staging" }
      spool_directory = "/var/lib/emberscope/spool"   // ours: keep what cannot be sent
    }

One Connect unary ``PushRequest`` per profile; the queueing and retries live in
``agent.write.sender``. This is the only module that sees httpx and its errors.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import httpx
from prometheus_client import CollectorRegistry

from agent import __version__
from agent.config.component import (
    URL,
    ArgumentError,
    Capsule,
    ComponentOptions,
    Duration,
    Health,
    block,
)
from agent.config.httpclient import HTTPClientArguments, TLSConfig, ssl_context
from agent.errors import ConfigError, PushError
from agent.write.profile import LabeledProfile, shortened
from agent.write.push import push_pb2, types_pb2
from agent.write.sender import Backoff, EndpointSender, WriteMetrics
from agent.write.spool import Spool

__all__ = [
    "EndpointOptions",
    "PyroscopeWrite",
    "PyroscopeWriteArguments",
    "TracingOptions",
    "encode_push_request",
    "series_labels",
]

log = logging.getLogger(__name__)

PUSH_PATH = "/push.v1.PusherService/Push"
_METRICS_KEY = "pyroscope.write.metrics"
_QUEUE_SIZE = 256  # per endpoint: about an hour of one target at the default 15 s interval
# At stop, seconds a push in flight may still take before what is left is spooled:
# within the 5 s the agent adds to --stop.timeout (agent.pipeline).
_CLOSE_AT_STOP_S = 3.0
_LABEL_NAME = re.compile(r"[A-Za-z0-9_.]+")
_UNSAFE_IN_NAME = re.compile(r"[^A-Za-z0-9._-]")
_KEPT_RESERVED = ("__name__", "__delta__")
# Connect codes worth another attempt (connect-go; Alloy's write.go), besides
# resource_exhausted, which is retried only with retry_on_http_429.
_RETRYABLE_CODES = (
    "deadline_exceeded",
    "unknown",
    "internal",
    "unavailable",
    "data_loss",
    "aborted",
)
# What Pyroscope's answer says of a profile over its max_profile_size_bytes limit.
_SIZE_LIMIT_NAME = "max_profile_size_byte"


def _unsupported(options: HTTPClientArguments) -> list[str]:
    """Alloy options this client does not implement: rejected rather than ignored."""
    tls = options.tls_config or TLSConfig()
    present = {
        "oauth2": options.oauth2,
        "no_proxy": options.no_proxy,
        "proxy_connect_header": options.proxy_connect_header,
        "cert_pem": tls.cert_pem,
        "key_pem": tls.key_pem,
        "server_name": tls.server_name,
    }
    return [name for name, value in present.items() if value]


@dataclass(frozen=True, kw_only=True)
class EndpointOptions(HTTPClientArguments):
    """One ``endpoint`` block: where to push, with retries (§8.3) and the HTTP client options.

    A password in ``url`` (``http://user:password@host``) is sent as basic
    auth and shown nowhere: ``url`` is a :class:`URL`.
    """

    url: URL
    name: str = ""
    remote_timeout: Duration = Duration(10)
    headers: dict[str, str] = field(default_factory=dict)
    min_backoff_period: Duration = Duration(0.5)
    max_backoff_period: Duration = Duration(300)
    max_backoff_retries: int = 10  # 0: retry without limit
    retry_on_http_429: bool = True
    debug_info_upload_timeout: Duration = Duration(120)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.url, URL):
            object.__setattr__(self, "url", URL(self.url))
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ArgumentError("url", "must be an http:// or https:// URL with a host")
        if self.remote_timeout <= 0:
            raise ArgumentError("remote_timeout", "must be greater than 0")
        if self.max_backoff_period < self.min_backoff_period:
            raise ArgumentError("max_backoff_period", "must not be less than min_backoff_period")
        if self.max_backoff_retries < 0:
            raise ArgumentError("max_backoff_retries", "must not be negative (0 means no limit)")
        if unsupported := _unsupported(self):
            raise ArgumentError(unsupported[0], "is not supported by emberscope's pyroscope.write")


@dataclass(frozen=True, kw_only=True)
class TracingOptions:
    """``tracing``: which trace-context headers go out with each push."""

    jaeger_propagator: bool = True
    trace_context_propagator: bool = True


@dataclass(frozen=True, kw_only=True)
class PyroscopeWriteArguments:
    """The arguments of ``pyroscope.write``; with no ``endpoint`` nothing is sent."""

    endpoint: list[EndpointOptions] = block(default_factory=list)
    external_labels: dict[str, str] = field(default_factory=dict)
    tracing: TracingOptions = block(default_factory=TracingOptions)
    # ours, not Alloy's: profiles the endpoint cannot take wait on disk, one
    # subdirectory per endpoint; "" keeps no spool
    spool_directory: str = ""
    spool_max_bytes: int = 256 << 20  # per endpoint; past it the oldest are dropped

    def __post_init__(self) -> None:
        for name in self.external_labels:
            if not _LABEL_NAME.fullmatch(name):
                raise ArgumentError("external_labels", f"invalid label name {name!r}")
        if self.spool_max_bytes <= 0:
            raise ArgumentError("spool_max_bytes", "must be greater than 0")
        if self.spool_directory:
            names = [spool_name(options) for options in self.endpoint]
            if len(set(names)) < len(names):
                raise ArgumentError(
                    "spool_directory",
                    "two endpoints would share a spool: give each endpoint a distinct name",
                )


def spool_name(options: EndpointOptions) -> str:
    """The subdirectory of an endpoint's spool: its name, else its URL (no password),
    in characters safe in a file name."""
    return _UNSAFE_IN_NAME.sub("_", options.name or _display_url(options.url))


def series_labels(
    labels: Mapping[str, str], external_labels: Mapping[str, str]
) -> list[tuple[str, str]]:
    """The labels a profile is pushed under, sorted by name (Alloy's ``Append``, §8.2).

    Raises ValueError naming the offending label when the set breaks the rules of
    §7.1: such a push would only earn a 400 that is never retried.
    """
    if not labels:
        raise ValueError("a profile needs at least one label")
    for name, value in labels.items():
        if name != "__name__" and not _LABEL_NAME.fullmatch(name):
            raise ValueError(f"invalid label name {name!r}: use only letters, digits, _ and .")
        try:
            value.encode()
        except UnicodeEncodeError:
            raise ValueError(f"label {name!r} has a value that is not valid UTF-8") from None
    kept = {n: v for n, v in labels.items() if not n.startswith("__") or n in _KEPT_RESERVED}
    kept.update(external_labels)
    return sorted(kept.items())


def encode_push_request(labels: list[tuple[str, str]], profile: bytes) -> bytes:
    """A serialized ``PushRequest`` of one series holding one sample, as Alloy sends."""
    series = push_pb2.RawProfileSeries(
        labels=[types_pb2.LabelPair(name=name, value=value) for name, value in labels],
        samples=[push_pb2.RawSample(raw_profile=profile)],
    )
    return push_pb2.PushRequest(series=[series]).SerializeToString()


def _display_url(url: str) -> str:
    """The URL without any ``user:password@``, for logs, health and metric labels."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def _scrubbed(*urls: URL) -> list[tuple[str, str]]:
    """(secret, what to show instead) for each URL with a password, and the password
    itself, raw and decoded, where it is long enough not to be any word."""
    pairs = []
    for url in urls:
        credentials = _url_credentials(url)
        if credentials is None or not credentials[1]:
            continue
        pairs.append((url.reveal(), str(url)))
        raw = urlsplit(url.reveal()).netloc.rpartition("@")[0].partition(":")[2]
        pairs.extend((secret, "(redacted)") for secret in {raw, credentials[1]} if len(secret) > 3)
    return pairs


def _url_credentials(url: URL) -> tuple[str, str] | None:
    """The (user, password) written in ``url``, percent-decoded, or None."""
    userinfo, at, _ = urlsplit(url.reveal()).netloc.rpartition("@")
    if not at:
        return None
    user, _, password = userinfo.partition(":")
    return unquote(user), unquote(password)


def _read_secret(path: str, argument: str) -> str:
    """A credential file is read at each push, so a rotated secret is picked up."""
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise PushError(f"cannot read {argument} {path}: {exc.strerror}", retryable=False) from exc


class _HttpPusher:
    """Sends push bodies to one endpoint over one pooled httpx client."""

    def __init__(self, options: EndpointOptions, transport: httpx.BaseTransport | None) -> None:
        self._options = options
        # httpx never sees the URL's credentials: they would be in its log lines.
        self.url = _display_url(options.url).rstrip("/") + PUSH_PATH
        self._url_credentials = _url_credentials(options.url)
        self._scrubbed = _scrubbed(options.url, options.proxy_url)
        try:
            verify = ssl_context(options.tls_config)
        except OSError as exc:
            message = f"endpoint {_display_url(options.url)}: tls_config: {exc}"
            raise ConfigError(message) from exc
        self._client = httpx.Client(
            verify=verify,
            timeout=float(options.remote_timeout),
            follow_redirects=options.follow_redirects,
            proxy=options.proxy_url.reveal() or None,
            trust_env=options.proxy_from_environment,
            transport=transport,
        )
        self._static_headers = self._build_static_headers()

    def close(self) -> None:
        self._client.close()

    def push(self, body: bytes) -> None:
        """One attempt; raises PushError, never an httpx error."""
        headers = list(self._static_headers)
        authorization = self._authorization()
        if authorization:
            headers.append(("Authorization", authorization))
        try:
            response = self._client.post(self.url, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            timeout = float(self._options.remote_timeout)
            raise PushError(f"no answer within {timeout:g}s", retryable=True) from exc
        except httpx.TransportError as exc:
            raise PushError(self._scrub(f"cannot connect: {exc}"), retryable=True) from exc
        except httpx.HTTPError as exc:
            message = self._scrub(f"{type(exc).__name__}: {exc}")
            raise PushError(message, retryable=False) from exc
        if not response.is_success:
            raise self._answer_error(response)

    def _build_static_headers(self) -> list[tuple[str, str]]:
        options = self._options
        fixed = {
            "Content-Type": "application/proto",
            "Connect-Protocol-Version": "1",
            "Connect-Timeout-Ms": str(int(options.remote_timeout * 1000)),
            "User-Agent": f"emberscope/{__version__}",
        }
        fixed.update(options.headers)
        multi = {name.lower() for name in options.http_headers}
        headers = [(name, value) for name, value in fixed.items() if name.lower() not in multi]
        for name, values in options.http_headers.items():
            headers.extend((name, str(value)) for value in values)
        return headers

    def _authorization(self) -> str:
        options = self._options
        if options.basic_auth is not None:
            auth = options.basic_auth
            password = auth.password or (
                _read_secret(auth.password_file, "password_file") if auth.password_file else ""
            )
            pair = f"{auth.username}:{password}".encode()
            return "Basic " + base64.b64encode(pair).decode()
        if options.authorization is not None:
            auth = options.authorization
            credentials = auth.credentials or (
                _read_secret(auth.credentials_file, "credentials_file")
                if auth.credentials_file
                else ""
            )
            return f"{auth.type} {credentials}"
        if options.bearer_token:
            return f"Bearer {options.bearer_token}"
        if options.bearer_token_file:
            return "Bearer " + _read_secret(options.bearer_token_file, "bearer_token_file")
        if self._url_credentials is not None:
            pair = "{}:{}".format(*self._url_credentials).encode()
            return "Basic " + base64.b64encode(pair).decode()
        return ""

    def _scrub(self, message: str) -> str:
        """An httpx message may quote a URL (a proxy's, say): never with its password."""
        for secret, shown in self._scrubbed:
            message = message.replace(secret, shown)
        return message

    def _answer_error(self, response: httpx.Response) -> PushError:
        """Whether to retry comes from the Connect error code when the body has one,
        else from the status: 408, 429 and 5xx are retried, other 4xx are not."""
        status = response.status_code
        code, message = _connect_error(response)
        if code:
            retryable = code in _RETRYABLE_CODES or (
                code == "resource_exhausted" and self._options.retry_on_http_429
            )
        elif status == 429:
            retryable = self._options.retry_on_http_429
        else:
            retryable = status >= 500 or status == 408
        reason = (
            f"HTTP {status}" + (f" {code}" if code else "") + (f": {message}" if message else "")
        )
        return PushError(reason, retryable=retryable, status=status)


def _connect_error(response: httpx.Response) -> tuple[str, str]:
    """The Connect ``{"code", "message"}`` of an error answer, or ("", the body), each
    shortened: Pyroscope quotes the whole label set before saying what is wrong."""
    text = shortened(response.text.strip(), 200)
    try:
        error = json.loads(response.text)
    except ValueError:
        return "", text
    if isinstance(error, dict) and isinstance(error.get("code"), str):
        return error["code"], shortened(str(error.get("message", "")), 200)
    return "", text


def _drop_reason(exc: PushError) -> str:
    """Why a push not worth retrying is dropped (see WriteMetrics.DROP_REASONS)."""
    if exc.status == 413 or _SIZE_LIMIT_NAME in exc.reason:
        return "too_large"
    return "rejected"


_Endpoint = tuple[EndpointSender, _HttpPusher]


class PyroscopeWrite:
    """Receives profiles and pushes each to every endpoint, one sender thread per endpoint.

    >>> write = PyroscopeWrite(options, arguments, registry=registry)
    >>> threading.Thread(target=write.run, args=(stop,)).start()
    >>> write.append(LabeledProfile(labels, gzipped_pprof, time.time_ns()))  # never blocks
    """

    Arguments = PyroscopeWriteArguments

    @dataclass(frozen=True)
    class Exports:
        receiver: Capsule

    def __init__(
        self,
        options: ComponentOptions,
        arguments: PyroscopeWriteArguments,
        *,
        registry: CollectorRegistry | None = None,
        transport: httpx.BaseTransport | None = None,
        queue_size: int = _QUEUE_SIZE,
    ) -> None:
        self._options = options
        self.registry, self._metrics = _metrics_of(options, registry)
        self._transport = transport
        self._queue_size = queue_size
        self._lock = threading.Lock()
        self._running = False
        self._since = time.time()
        self._arguments = arguments
        self._spools: dict[Path, Spool] = {}
        # Replaced whole by update(), so append() reads one consistent pair.
        self._state = (
            dict(arguments.external_labels),
            [self._open(options, arguments) for options in arguments.endpoint],
        )

    def append(self, profile: LabeledProfile) -> None:
        external_labels, endpoints = self._state
        size = len(profile.data)
        try:
            labels = series_labels(profile.labels, external_labels)
        except ValueError as exc:
            service = shortened(repr(profile.labels.get("service_name", "")), 80)
            reason = shortened(str(exc))
            log.warning("%s: dropped a profile of %s: %s", self._options.id, service, reason)
            for sender, _ in endpoints:
                self._metrics.count_dropped(sender.endpoint, size, "invalid_labels")
            return
        body = encode_push_request(labels, profile.data)
        for sender, _ in endpoints:
            sender.enqueue(body, size)

    def exports(self) -> dict[str, Any]:
        return {"receiver": self}

    def health(self) -> Health:
        failing = [sender for sender, _ in self._state[1] if sender.failure]
        if not failing:
            return Health("healthy", "", self._since)
        since = min(sender.failure_since for sender in failing)
        return Health("unhealthy", "; ".join(sender.failure for sender in failing), since)

    def update(self, arguments: PyroscopeWriteArguments) -> None:
        """Endpoints whose options (and spool directory) stay keep their queues, under
        the new spool cap; new ones are opened, and those no longer configured closed:
        what they hold is spooled, or dropped and counted without a spool."""
        running = list(zip(self._arguments.endpoint, self._state[1], strict=True))
        spooled_alike = arguments.spool_directory == self._arguments.spool_directory
        for spool in self._spools.values():
            spool.max_bytes = arguments.spool_max_bytes
        endpoints: list[_Endpoint] = []
        opened = []
        for options in arguments.endpoint:
            same = [e for o, e in running if spooled_alike and o == options and e not in endpoints]
            if not same:
                opened.append(self._open(options, arguments))
            endpoints.append(same[0] if same else opened[-1])
        with self._lock:
            self._state = (dict(arguments.external_labels), endpoints)
            self._arguments = arguments
            if self._running:
                for sender, _ in opened:
                    sender.start()
        _close([endpoint for _, endpoint in running if endpoint not in endpoints])

    def run(self, stop: threading.Event) -> None:
        with self._lock:
            self._running = True
            for sender, _ in self._state[1]:
                sender.start()
        stop.wait()
        with self._lock:
            self._running = False
            endpoints = self._state[1]
        # The producers have stopped (the graph stops them first): deliver what is
        # queued within the stop timeout, counted from the start of the whole stop;
        # what is left is then spooled (or dropped) within the graph's margin.
        deadline = self._options.stop_started() + self._options.stop_timeout
        late = [sender.endpoint for sender, _ in endpoints if not sender.wait_idle(deadline)]
        if late:
            log.warning("%s: not all delivered at stop: %s", self._options.id, ", ".join(late))
        _close(endpoints, _CLOSE_AT_STOP_S)

    def _open(self, options: EndpointOptions, arguments: PyroscopeWriteArguments) -> _Endpoint:
        pusher = _HttpPusher(options, self._transport)
        backoff = Backoff(
            float(options.min_backoff_period),
            float(options.max_backoff_period),
            options.max_backoff_retries,
        )
        endpoint = _display_url(options.url)
        sender = EndpointSender(
            endpoint,
            pusher.push,
            backoff,
            self._metrics,
            queue_size=self._queue_size,
            drop_reason=_drop_reason,
            spool=self._open_spool(options, endpoint, arguments),
        )
        return sender, pusher

    def _open_spool(
        self, options: EndpointOptions, endpoint: str, arguments: PyroscopeWriteArguments
    ) -> Spool | None:
        """The endpoint's spool, one object per directory: the senders of an endpoint
        before and after an update share it."""
        if not arguments.spool_directory:
            return None
        path = Path(arguments.spool_directory) / spool_name(options)
        spool = self._spools.get(path)
        if spool is not None:
            return spool  # its cap already updated

        def count_dropped(size: int, reason: str) -> None:
            self._metrics.count_dropped(endpoint, size, reason)

        try:
            spool = self._spools[path] = Spool(path, arguments.spool_max_bytes, count_dropped)
        except OSError as exc:
            raise ConfigError(f"spool_directory: cannot use {path}: {exc.strerror}") from exc
        return spool


def _metrics_of(
    options: ComponentOptions, registry: CollectorRegistry | None
) -> tuple[CollectorRegistry, WriteMetrics]:
    """The agent's registry (``options.registry``) unless one is given; there the metrics
    are declared once per agent and shared by every ``pyroscope.write``."""
    if registry is not None or options.registry is None:
        registry = registry if registry is not None else CollectorRegistry()
        return registry, WriteMetrics(registry)
    with options.shared_lock:
        metrics = options.shared.get(_METRICS_KEY)
        if metrics is None:
            metrics = options.shared[_METRICS_KEY] = WriteMetrics(options.registry)
    return options.registry, metrics


def _close(endpoints: list[_Endpoint], timeout: float = 5.0) -> None:
    """Stop every sender first, so endpoints stalled mid-push share one wait."""
    deadline = time.monotonic() + timeout
    for sender, _ in endpoints:
        sender.stop()
    for sender, pusher in endpoints:
        sender.close(max(0.0, deadline - time.monotonic()))
        pusher.close()
