"""The HTTP client options Alloy components share (``common/config.HTTPClientConfig``).

A component whose arguments include them subclasses :class:`HTTPClientArguments`;
the options then sit at the level of its own arguments, as in Alloy, where they
are squashed into ``endpoint``, ``discovery.kubernetes`` and ``discovery.docker``.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field

from agent.config.component import URL, ArgumentError, Secret, block

__all__ = [
    "Authorization",
    "BasicAuth",
    "HTTPClientArguments",
    "OAuth2",
    "ProxyArguments",
    "TLSConfig",
    "ssl_context",
]

_SSL_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
TLS_VERSIONS = tuple(_SSL_VERSIONS)
_AUTH_METHODS = ("authorization", "basic_auth", "bearer_token", "bearer_token_file", "oauth2")


def _exclusive(first: str, first_value: object, second: str, second_value: object) -> None:
    if first_value and second_value:
        raise ArgumentError(second, f"cannot be set together with {first}")


@dataclass(frozen=True, kw_only=True)
class TLSConfig:
    """``tls_config``: each ``*_pem`` / ``*_file`` pair is exclusive; minimum TLS 1.2 by default."""

    ca_pem: str = ""
    ca_file: str = ""
    cert_pem: str = ""
    cert_file: str = ""
    key_pem: Secret | None = None
    key_file: str = ""
    server_name: str = ""
    insecure_skip_verify: bool = False
    min_version: str = ""

    def __post_init__(self) -> None:
        _exclusive("ca_pem", self.ca_pem, "ca_file", self.ca_file)
        _exclusive("cert_pem", self.cert_pem, "cert_file", self.cert_file)
        _exclusive("key_pem", self.key_pem, "key_file", self.key_file)
        has_cert, has_key = (
            bool(self.cert_pem or self.cert_file),
            bool(self.key_pem or self.key_file),
        )
        if has_cert and not has_key:
            raise ArgumentError(
                "key_file", "a client certificate needs a key: set key_pem or key_file"
            )
        if has_key and not has_cert:
            message = "a client key needs a certificate: set cert_pem or cert_file"
            raise ArgumentError("cert_file", message)
        if self.min_version and self.min_version not in TLS_VERSIONS:
            raise ArgumentError("min_version", f"must be one of {', '.join(TLS_VERSIONS)}")


@dataclass(frozen=True, kw_only=True)
class BasicAuth:
    """``basic_auth``: ``Authorization: Basic`` from a username and a password or password file."""

    username: str = ""
    password: Secret | None = None
    password_file: str = ""

    def __post_init__(self) -> None:
        _exclusive("password", self.password, "password_file", self.password_file)


@dataclass(frozen=True, kw_only=True)
class Authorization:
    """``authorization``: ``Authorization: <type> <credentials>``."""

    type: str = "Bearer"
    credentials: Secret | None = None
    credentials_file: str = ""

    def __post_init__(self) -> None:
        _exclusive("credentials", self.credentials, "credentials_file", self.credentials_file)
        if self.type.lower() == "basic":
            raise ArgumentError("type", "Basic is not allowed here: use the basic_auth block")


@dataclass(frozen=True, kw_only=True)
class ProxyArguments:
    """The proxy options, shared by the client itself and its ``oauth2`` token requests."""

    proxy_url: URL = URL()
    no_proxy: str = ""
    proxy_from_environment: bool = False
    proxy_connect_header: dict[str, list[Secret]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # A proxy URL may carry its credentials: only the URL type hides them.
        if not isinstance(self.proxy_url, URL):
            object.__setattr__(self, "proxy_url", URL(self.proxy_url))
        if self.no_proxy and not self.proxy_url:
            raise ArgumentError("no_proxy", "requires proxy_url")
        if self.proxy_from_environment and (self.proxy_url or self.no_proxy):
            message = "cannot be set together with proxy_url or no_proxy"
            raise ArgumentError("proxy_from_environment", message)
        if self.proxy_connect_header and not (self.proxy_url or self.proxy_from_environment):
            message = "requires proxy_url or proxy_from_environment"
            raise ArgumentError("proxy_connect_header", message)


@dataclass(frozen=True, kw_only=True)
class OAuth2(ProxyArguments):
    """``oauth2``: client-credentials tokens fetched from ``token_url``."""

    client_id: str = ""
    client_secret: Secret | None = None
    client_secret_file: str = ""
    scopes: list[str] = field(default_factory=list)
    token_url: str = ""
    endpoint_params: dict[str, str] = field(default_factory=dict)
    tls_config: TLSConfig | None = block(default=None)

    def __post_init__(self) -> None:
        super().__post_init__()
        _exclusive(
            "client_secret", self.client_secret, "client_secret_file", self.client_secret_file
        )


@dataclass(frozen=True, kw_only=True)
class HTTPClientArguments(ProxyArguments):
    """Authentication (at most one method), TLS, proxy, redirects and HTTP/2."""

    basic_auth: BasicAuth | None = block(default=None)
    authorization: Authorization | None = block(default=None)
    oauth2: OAuth2 | None = block(default=None)
    bearer_token: Secret | None = None
    bearer_token_file: str = ""
    tls_config: TLSConfig | None = block(default=None)
    follow_redirects: bool = True
    enable_http2: bool = True
    http_headers: dict[str, list[Secret]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        configured = [name for name in _AUTH_METHODS if getattr(self, name)]
        if len(configured) > 1:
            message = f"at most one of {', '.join(_AUTH_METHODS[:-1])} and oauth2 may be set"
            raise ArgumentError(configured[1], message)


def ssl_context(tls: TLSConfig | None) -> ssl.SSLContext:
    """A client's TLS settings; a given CA replaces the system's, as in Go.

    Raises ``OSError`` (``ssl.SSLError`` included) for a file that cannot be read or used.
    """
    tls = tls or TLSConfig()
    context = ssl.create_default_context(cafile=tls.ca_file or None, cadata=tls.ca_pem or None)
    context.minimum_version = _SSL_VERSIONS[tls.min_version or "TLS12"]
    if tls.cert_file:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    if tls.insecure_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
