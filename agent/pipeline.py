"""Wires one running agent together from a configuration: the table of
component kinds, and the start and stop of their graph.

This is the only module that knows every room.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry

from agent.config import Graph
from agent.errors import ConfigError, EmberscopeError
from agent.telemetry import (
    ConfigMetrics,
    LoggingArguments,
    ProfilesPage,
    TelemetryServer,
    new_registry,
)
from agent.write import RECENT_PROFILES_KEY, RecentProfiles

__all__ = ["BLOCKS", "DEFAULT_STOP_TIMEOUT", "KINDS", "Agent", "check"]

log = logging.getLogger(__name__)

# Seconds pyroscope.write may spend delivering at stop (``--stop.timeout``); the
# whole stop takes at most this and _STOP_MARGIN more: under the 30 s Kubernetes
# gives a pod by default (terminationGracePeriodSeconds).
DEFAULT_STOP_TIMEOUT = 20.0
_STOP_MARGIN = 5.0
_RELOAD_POLL_S = 0.2


class _Kinds(Mapping[str, type]):
    """Component names to their classes, each module imported when a configuration first
    names its kind: a host that never reads ``discovery.kubernetes`` or ``pyroscope.write``
    keeps their HTTP client out of its memory."""

    def __init__(self, where: Mapping[str, str]) -> None:
        self._where = where  # kind -> "module:Class"

    def __getitem__(self, kind: str) -> type:
        module, _, name = self._where[kind].partition(":")
        return getattr(importlib.import_module(module), name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)


KINDS: Mapping[str, type] = _Kinds(
    {
        "discovery.docker": "agent.discovery.docker:DockerDiscovery",
        "discovery.kubernetes": "agent.discovery.kubernetes:KubernetesDiscovery",
        "discovery.process": "agent.discovery.process:ProcessDiscovery",
        "discovery.relabel": "agent.discovery.relabel:RelabelComponent",
        "local.file": "agent.local_file:LocalFile",
        "pyroscope.ebpf": "agent.pyroscope_ebpf:EbpfComponent",
        "pyroscope.file": "agent.write.files:FileReceiver",
        "pyroscope.write": "agent.write.pyroscope:PyroscopeWrite",
    }
)

# The unlabelled blocks that configure the agent itself.
BLOCKS: Mapping[str, type] = {"logging": LoggingArguments}


class Agent:
    """One configuration, loaded, checked and run until stopped, with its
    metrics, health and components served on ``listen_addr`` (None: not served).

    >>> agent = Agent.load(Path("examples/local.alloy"), os.environ, ("127.0.0.1", 12345))
    >>> agent.on_settings = apply_logging  # called with graph.settings after each reload
    >>> signal.signal(signal.SIGHUP, lambda *_: agent.request_reload())
    >>> agent.run_until(stop)
    """

    def __init__(
        self,
        graph: Graph,
        registry: CollectorRegistry,
        listen_addr: tuple[str, int] | None = None,
        recent: RecentProfiles | None = None,
        *,
        path: os.PathLike[str] | None = None,
        stop_timeout: float = DEFAULT_STOP_TIMEOUT,
    ) -> None:
        self.graph = graph
        self.registry = registry
        self.listen_addr = listen_addr
        self.recent = recent
        self.server: TelemetryServer | None = None
        self.path = path
        self.stop_timeout = stop_timeout
        graph.stop_timeout = stop_timeout
        self.last_reload_error = ""
        self._metrics = ConfigMetrics(registry)
        self._metrics.loaded(True)
        self._reload_requested = threading.Event()
        self._reloading = threading.Lock()
        # applies the configuration's own blocks (``logging``) again after a reload
        self.on_settings: Callable[[Mapping[str, Any]], None] = lambda settings: None

    @classmethod
    def load(
        cls,
        path: os.PathLike[str],
        environ: Mapping[str, str],
        listen_addr: tuple[str, int] | None = None,
        recent_limits: tuple[int, int] | None = None,
        stop_timeout: float = DEFAULT_STOP_TIMEOUT,
    ) -> Agent:
        """Parse and check ``path``; raise ConfigError before anything runs.

        Where HTTP is served and ``recent_limits`` given (intervals per target,
        bytes in all), the last profiles are kept for its ``/profiles/`` page.
        """
        registry = new_registry()
        recent = None
        if listen_addr is not None and recent_limits is not None:
            recent = RecentProfiles(*recent_limits, registry)
        shared = {RECENT_PROFILES_KEY: recent} if recent is not None else {}
        graph = Graph.load(
            path, KINDS, environ=environ, registry=registry, shared=shared, blocks=BLOCKS
        )
        return cls(graph, registry, listen_addr, recent, path=path, stop_timeout=stop_timeout)

    def start(self) -> None:
        """Listen first, so that a taken port fails before any BPF program loads."""
        if self.listen_addr is not None:
            try:
                page = ProfilesPage(self.recent) if self.recent is not None else None
                self.server = TelemetryServer(
                    self.listen_addr, self.registry, self.graph, profiles=page, reloader=self
                )
            except OSError as exc:
                host, port = self.listen_addr
                raise EmberscopeError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
            self.server.start()
        self.graph.start()
        log.info("agent started components=%d", len(self.graph.order))

    def request_reload(self) -> None:
        """Ask ``run_until`` to reload the configuration; safe in a signal handler."""
        self._reload_requested.set()

    def reload(self) -> str:
        """Read the configuration file again and apply it; return "" or, when it does
        not load, the error, while the configuration running keeps running."""
        with self._reloading:
            try:
                started = self.graph.reload(self.path)
            except ConfigError as exc:
                self.last_reload_error = str(exc)
                self._metrics.loaded(False)
                log.error("reload failed; the previous configuration keeps running: %s", exc)
                return self.last_reload_error
            self.last_reload_error = ""
            self._metrics.loaded(True)
            self.on_settings(self.graph.settings)
            log.info(
                "configuration reloaded components=%d started=%s",
                len(self.graph.order),
                ",".join(started) or "none",
            )
            return ""

    def run_until(self, stop: threading.Event) -> None:
        """Run until ``stop`` is set, reloading when asked; then stop the components,
        producers first, within ``stop_timeout`` and a margin."""
        self.start()
        try:
            while not stop.wait(_RELOAD_POLL_S):
                if self._reload_requested.is_set():
                    self._reload_requested.clear()
                    self.reload()
        finally:
            if self.server is not None:
                self.server.stop()
            log.info("agent stopping: delivering for up to %gs", self.stop_timeout)
            still_running = self.graph.stop(self.stop_timeout + _STOP_MARGIN)
            if still_running:
                log.warning("components did not stop in time: %s", ", ".join(still_running))
            log.info("agent stopped")


def check(path: os.PathLike[str], environ: Mapping[str, str]) -> None:
    """Check a configuration as ``emberscope check-config`` does."""
    Graph.load(path, KINDS, environ=environ, blocks=BLOCKS)
