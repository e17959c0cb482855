"""The ``pyroscope.write`` component: profiles pushed to Pyroscope over HTTP.

For now its arguments, with Alloy's names, defaults and checks
(``pyroscope-push-and-pprof.md`` §8.4)::

    pyroscope.write "staging" {
      endpoint {
        url     = "http://pyroscope:4040"
        headers = { "X-Scope-OrgID" = "team-a" }
      }
      external_labels = { env = "staging" }
    }
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

from agent.config.component import ArgumentError, Duration, block
from agent.config.httpclient import HTTPClientArguments

__all__ = ["EndpointOptions", "PyroscopeWriteArguments", "TracingOptions"]


@dataclass(frozen=True, kw_only=True)
class EndpointOptions(HTTPClientArguments):
    """One ``endpoint`` block: where to push, with retries (§8.3) and the HTTP client options."""

    url: str
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
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ArgumentError("url", "must be an http:// or https:// URL with a host")
        if self.remote_timeout <= 0:
            raise ArgumentError("remote_timeout", "must be greater than 0")
        if self.max_backoff_period < self.min_backoff_period:
            raise ArgumentError("max_backoff_period", "must not be less than min_backoff_period")
        if self.max_backoff_retries < 0:
            raise ArgumentError("max_backoff_retries", "must not be negative (0 means no limit)")


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
