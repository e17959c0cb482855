"""What every discovery component exports: targets on change only, health, error counts."""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry

from agent.config.component import ComponentOptions
from agent.discovery.exports import PublishedTargets


def published(registry: CollectorRegistry | None, shared: dict, name: str = "discovery.x.a"):
    sent: list[dict] = []
    options = ComponentOptions(name, sent.append, shared, threading.Lock(), registry=registry)
    return PublishedTargets(options), sent


def test_targets_are_published_only_when_they_change():
    targets, sent = published(None, {})
    targets.publish([{"__process_pid__": "1"}])
    targets.publish([{"__process_pid__": "1"}])
    targets.publish([])
    assert sent == [{"targets": [{"__process_pid__": "1"}]}, {"targets": []}]
    assert targets.exports() == {"targets": []}


def test_each_failed_attempt_is_counted_per_component_and_health_follows():
    registry, shared = CollectorRegistry(), {}
    first, _ = published(registry, shared, "discovery.docker.a")
    second, _ = published(registry, shared, "discovery.kubernetes.b")
    first.set_health("unhealthy", "cannot connect")
    first.set_health("unhealthy", "cannot connect")
    second.set_health("healthy", "3 pods")
    value = registry.get_sample_value
    assert value("emberscope_discovery_errors_total", {"component_id": "discovery.docker.a"}) == 2
    assert (
        value("emberscope_discovery_errors_total", {"component_id": "discovery.kubernetes.b"}) == 0
    )
    assert first.health().state == "unhealthy" and first.health().message == "cannot connect"
    first.set_health("healthy", "1 container")
    assert first.health().state == "healthy"
