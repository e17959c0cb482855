"""What every discovery component exports: its targets and its health.

Targets are published to the graph only when they change, and in order;
health changes are logged once per change of state, not once per retry, and
every failed attempt is counted in ``emberscope_discovery_errors_total``.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter

from agent.config.component import ComponentOptions, Health

__all__ = ["PublishedTargets", "TargetsExports", "component_counter"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TargetsExports:
    """The ``Exports`` of every discovery component: ``targets``."""

    targets: list[dict[str, str]]


class PublishedTargets:
    """The exported ``targets`` and the health of one discovery component."""

    def __init__(self, options: ComponentOptions) -> None:
        self._options = options
        self._lock = threading.Lock()
        self._publish_lock = threading.Lock()
        self._targets: list[dict[str, str]] = []
        self._health = Health("unknown", "not run yet", time.time())
        self._errors = component_counter(
            options,
            "emberscope_discovery_errors",
            "Failed attempts of a discovery component to read its source.",
        )

    def exports(self) -> dict[str, Any]:
        with self._lock:
            return {"targets": [dict(target) for target in self._targets]}

    def health(self) -> Health:
        with self._lock:
            return self._health

    def set_health(self, state: str, message: str) -> None:
        """Record the outcome of one attempt; ``unhealthy`` means it failed."""
        if state == "unhealthy" and self._errors is not None:
            self._errors.inc()
        with self._lock:
            previous = self._health
            if (previous.state, previous.message) == (state, message):
                return
            self._health = Health(state, message, time.time())
        if state != previous.state:
            level = logging.WARNING if state == "unhealthy" else logging.INFO
            log.log(level, "%s %s: %s", self._options.id, state, message)

    def publish(self, targets: list[dict[str, str]]) -> None:
        """Export ``targets`` if they differ from the last ones exported."""
        with self._publish_lock:
            with self._lock:
                if targets == self._targets:
                    return
                self._targets = targets
            log.debug("%s: %d targets", self._options.id, len(targets))
            self._options.on_exports({"targets": [dict(target) for target in targets]})


def component_counter(options: ComponentOptions, name: str, documentation: str) -> Any:
    """This component's child of the agent's one counter ``name`` (labelled by
    ``component_id``); None when the component has no registry."""
    if options.registry is None:
        return None
    with options.shared_lock:
        counter = options.shared.get(name)
        if counter is None:
            counter = Counter(name, documentation, ["component_id"], registry=options.registry)
            options.shared[name] = counter
    return counter.labels(options.id)
