"""The ``discovery.docker`` component: targets from a Docker-compatible Engine API.

For now its arguments, with Alloy's names, defaults and checks
(``relabel-and-discovery.md`` §10.1)::

    discovery.docker "linux" {
      host = "unix:///var/run/docker.sock"
      filter {
        name   = "label"
        values = ["profile=true"]
      }
    }
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.config.component import ArgumentError, Duration, block
from agent.config.httpclient import HTTPClientArguments

__all__ = ["DockerArguments", "DockerFilter"]


@dataclass(frozen=True, kw_only=True)
class DockerFilter:
    """One ``filter`` block: a Docker list filter such as ``label`` or ``name``."""

    name: str
    values: list[str]


@dataclass(frozen=True, kw_only=True)
class DockerArguments(HTTPClientArguments):
    """The arguments of ``discovery.docker``.

    The HTTP client options apply only to ``http://`` and ``https://`` hosts.
    """

    host: str
    port: int = 80  # in __address__ when a container publishes no TCP port
    host_networking_host: str = "localhost"
    refresh_interval: Duration = Duration(60)
    filter: list[DockerFilter] = block(default_factory=list)
    match_first_network: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.refresh_interval <= 0:
            raise ArgumentError("refresh_interval", "must be greater than 0")
