"""Wires one running agent together from a configuration: the table of
component kinds, and the start and stop of their graph.

This is the only module that knows every room.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from agent.config import ComponentOptions, Graph
from agent.discovery import (
    DockerArguments,
    KubernetesArguments,
    ProcessDiscovery,
    RelabelComponent,
)
from agent.errors import ConfigError
from agent.pyroscope_ebpf import EbpfComponent
from agent.write import FileReceiver, PyroscopeWrite

__all__ = ["KINDS", "Agent", "check"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _TargetsExports:
    targets: list[dict[str, str]]


class _CheckedOnly:
    """A kind whose arguments are checked, but which cannot run yet."""

    Arguments: ClassVar[type]
    Exports: ClassVar[type]
    missing: ClassVar[str]

    def __init__(self, options: ComponentOptions, arguments: Any) -> None:
        raise ConfigError(f"{options.id}: {self.missing}")


class _KubernetesDiscovery(_CheckedOnly):
    Arguments = KubernetesArguments
    Exports = _TargetsExports
    missing = "discovery.kubernetes cannot run yet: the pod watch is not implemented"


class _DockerDiscovery(_CheckedOnly):
    Arguments = DockerArguments
    Exports = _TargetsExports
    missing = "discovery.docker cannot run yet: the Engine API client is not implemented"


KINDS: Mapping[str, type] = {
    "discovery.docker": _DockerDiscovery,
    "discovery.kubernetes": _KubernetesDiscovery,
    "discovery.process": ProcessDiscovery,
    "discovery.relabel": RelabelComponent,
    "pyroscope.ebpf": EbpfComponent,
    "pyroscope.file": FileReceiver,
    "pyroscope.write": PyroscopeWrite,
}


class Agent:
    """One configuration, loaded, checked and run until stopped.

    >>> agent = Agent.load(Path("examples/local.alloy"), os.environ)
    >>> agent.start()
    >>> ...
    >>> agent.stop()
    """

    def __init__(self, graph: Graph) -> None:
        self.graph = graph

    @classmethod
    def load(cls, path: os.PathLike[str], environ: Mapping[str, str]) -> Agent:
        """Parse and check ``path``; raise ConfigError before anything runs."""
        graph = Graph.load(path, KINDS, environ=environ)
        for component_id in graph.order:
            kind = KINDS[component_id.rsplit(".", 1)[0]]
            if issubclass(kind, _CheckedOnly):
                raise ConfigError(f"{path}: {component_id}: {kind.missing}")
        return cls(graph)

    def start(self) -> None:
        self.graph.start()
        log.info("agent started components=%d", len(self.graph.order))

    def run_until(self, stop: threading.Event) -> None:
        self.start()
        try:
            stop.wait()
        finally:
            still_running = self.graph.stop()
            if still_running:
                log.warning("components did not stop in time: %s", ", ".join(still_running))
            log.info("agent stopped")


def check(path: os.PathLike[str], environ: Mapping[str, str]) -> None:
    """Check a configuration as ``emberscope check-config`` does."""
    Graph.load(path, KINDS, environ=environ)
