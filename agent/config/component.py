"""The contract between the configuration graph and the components it runs.

A component kind is a class with a nested ``Arguments`` dataclass. The graph
decodes a block of the configuration file into that dataclass, starts the
component, and re-decodes its arguments whenever an export it refers to
changes. The graph knows components only through this interface; the table
of kinds (``"pyroscope.ebpf"`` → class) is handed to it by ``agent.pipeline``.

Declaring arguments::

    @dataclass(frozen=True)
    class Arguments:
        targets: list[dict[str, str]]                     # required: no default
        forward_to: list[Capsule]                         # component exports, e.g. receivers
        collect_interval: Duration = Duration(15)
        demangle: str = "none"
        rule: list[RuleBlock] = block(default_factory=list)  # nested blocks, repeatable
        basic_auth: BasicAuth | None = block(default=None)   # a nested block, at most once

        def __post_init__(self) -> None:
            if self.collect_interval <= 0:
                raise ArgumentError("collect_interval", "must be greater than 0")

Field names are the Alloy attribute and block names. Accepted field types:
``str``, ``Secret``, ``URL``, ``int``, ``float``, ``bool``, ``Duration``, ``list[X]``,
``dict[str, X]``, ``X | None``, ``Capsule``, and nested dataclasses for blocks.

A kind may also declare an ``Exports`` dataclass whose field names are the
names in its ``exports()`` dict (``targets``, ``output``, ``receiver``). The
graph then rejects at load a reference to an export the kind lacks; without
it, such a reference fails only when evaluated, after start.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from prometheus_client import CollectorRegistry

__all__ = [
    "ArgumentError",
    "Capsule",
    "Component",
    "ComponentOptions",
    "Duration",
    "Health",
    "Secret",
    "URL",
    "block",
]

_REDACTED = "(redacted)"


class Duration(float):
    """Seconds, written in the configuration as a Go duration string (``"15s"``)."""


class Secret(str):
    """A string never shown in logs, debug info or errors."""

    def __repr__(self) -> str:
        return "Secret('(redacted)')"


class URL(str):
    """A URL whose password is never shown.

    The string itself is the URL with the password of its ``user:password@``
    replaced, so logs, errors, debug info and the component API cannot show
    it; ``reveal()`` gives the URL as written, for the HTTP client alone. Two
    URLs are equal when the URLs as written are.

    >>> url = URL("http://user:pass@pyroscope:4040")
    >>> str(url), url.reveal()
    ('http://user:(redacted)@pyroscope:4040', 'http://user:pass@pyroscope:4040')
    """

    _written: Secret

    def __new__(cls, written: str = "") -> URL:
        url = super().__new__(cls, _without_password(written))
        url._written = Secret(written)
        return url

    def reveal(self) -> str:
        return str.__str__(self._written)

    def __repr__(self) -> str:
        return f"URL({str.__repr__(self)})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, URL):
            return self.reveal() == other.reveal()
        return str.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash(self.reveal())

    def __reduce__(self) -> tuple[type[URL], tuple[str]]:
        return URL, (self.reveal(),)


def _without_password(url: str) -> str:
    """``url`` with the password of its authority replaced; written without a parser,
    so that no URL, however malformed, is shown as it is."""
    scheme_end = url.find("://")
    start = scheme_end + 3 if scheme_end >= 0 else 0
    end = len(url)
    for stop in "/?#":
        found = url.find(stop, start)
        if found >= 0:
            end = min(end, found)
    userinfo, at, _ = url[start:end].rpartition("@")
    user, colon, _ = userinfo.partition(":")
    if not at or not colon:
        return url
    return f"{url[:start]}{user}:{_REDACTED}@{url[start + len(userinfo) + 1 :]}"


class Capsule:
    """Marks an argument that takes values exported by other components
    (receivers, for example) rather than plain data. The decoder accepts any
    object that is not a string, number, bool, list or object."""


class ArgumentError(ValueError):
    """Raised by an ``Arguments.__post_init__`` to reject one argument's value.

    The graph turns it into a ConfigError positioned at that attribute.
    """

    def __init__(self, argument: str, message: str) -> None:
        self.argument = argument
        super().__init__(f"{argument}: {message}")


def block(**kwargs: Any) -> Any:
    """A dataclass field that is a nested block rather than an attribute."""
    return dataclasses.field(metadata={"block": True}, **kwargs)


@dataclass(frozen=True, slots=True)
class Health:
    state: str  # "healthy", "unhealthy" or "unknown"
    message: str = ""
    updated: float = 0.0  # time.time() of the change


@dataclass(frozen=True, slots=True)
class ComponentOptions:
    """What the graph gives every component it creates."""

    id: str  # "pyroscope.ebpf.default": kind and label
    on_exports: Callable[[dict[str, Any]], None]  # call when exports change
    shared: dict[str, Any]  # per-agent singletons by name (the one BPF session, ...)
    shared_lock: threading.Lock
    registry: CollectorRegistry | None = None  # the agent's metrics; None: not exposed
    # Seconds a component may still spend delivering what it holds once its stop is
    # set (``emberscope run --stop.timeout``); the graph stops producers first.
    stop_timeout: float = 10.0
    # When the stop began (monotonic): the graph's, before its producers' last
    # collection; ``stop_timeout`` counts from it. Alone, a component's own stop.
    stop_started: Callable[[], float] = time.monotonic


class Component(Protocol):
    """One running component.

    ``__init__`` validates nothing beyond what ``Arguments`` did and must not
    block; ``run`` does the work until ``stop`` is set; ``update`` may be
    called from another thread while ``run`` runs.

    Optional: a static ``check_together(arguments)`` is given the arguments of
    every component of the kind at load (id -> arguments) and raises ConfigError
    when they may not run side by side; ``restart_needed(arguments)`` says a
    reload must create the component again instead of updating it.
    """

    Arguments: ClassVar[type]

    def __init__(self, options: ComponentOptions, arguments: Any) -> None: ...

    def run(self, stop: threading.Event) -> None: ...

    def update(self, arguments: Any) -> None: ...

    def exports(self) -> dict[str, Any]: ...

    def health(self) -> Health: ...
