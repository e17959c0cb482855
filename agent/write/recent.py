"""The last few profiles of each target, held in memory for the agent's page.

A receiver like the others: every ``pyroscope.ebpf`` of an agent that serves
HTTP hands it each profile beside its ``forward_to``. It holds the last
``intervals`` profiles of each target (a target is its label set) and, over all
targets, at most ``max_bytes`` of pprof and labels: past that the oldest
profile goes first, counted. Python's own overhead per profile (a few hundred
bytes) is not in the count.
"""

from __future__ import annotations

import collections
import hashlib
import json
import threading
from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge

from agent.write.profile import LabeledProfile

__all__ = ["RECENT_PROFILES_KEY", "RecentProfiles", "target_id"]

RECENT_PROFILES_KEY = "write.recent_profiles"  # its place in ComponentOptions.shared

_Key = tuple[tuple[str, str], ...]


class RecentProfiles:
    """A bounded ring of profiles per target.

    >>> recent = RecentProfiles(intervals=4, max_bytes=32 << 20, registry=registry)
    >>> recent.append(profile)              # from a Fanout
    >>> recent.targets()                    # {target id: labels}, for the page
    >>> recent.last(target_id, 2)           # the two newest profiles of one target
    """

    def __init__(
        self, intervals: int, max_bytes: int, registry: CollectorRegistry | None = None
    ) -> None:
        if intervals < 1:
            raise ValueError(f"intervals must be 1 or more, not {intervals}")
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be 1 or more, not {max_bytes}")
        self.intervals = intervals
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._rings: dict[str, collections.deque[LabeledProfile]] = {}  # never empty
        self._bytes = 0
        registry = registry if registry is not None else CollectorRegistry()
        Gauge(
            "emberscope_recent_profiles_bytes",
            "Bytes of pprof and labels the agent's page holds, at most "
            "emberscope_recent_profiles_max_bytes.",
            registry=registry,
        ).set_function(lambda: self._bytes)
        Gauge(
            "emberscope_recent_profiles_max_bytes",
            "The most bytes of pprof and labels the agent's page holds.",
            registry=registry,
        ).set(max_bytes)
        Gauge(
            "emberscope_recent_profiles",
            "Profiles the agent's page holds, the last few intervals of each target.",
            registry=registry,
        ).set_function(lambda: sum(len(ring) for ring in self._rings.values()))
        self._evicted = Counter(
            "emberscope_recent_evicted_profiles_total",
            "Profiles the agent's page let go before their target's ring was full, to stay "
            "within emberscope_recent_profiles_max_bytes.",
            registry=registry,
        )

    def append(self, profile: LabeledProfile) -> None:
        target = target_id(profile.labels)
        size = _size(profile)
        with self._lock:
            ring = self._rings.get(target)
            if ring is None:
                ring = self._rings[target] = collections.deque()
            if len(ring) == self.intervals:
                self._bytes -= _size(ring.popleft())
            ring.append(profile)
            self._bytes += size
            while self._bytes > self.max_bytes:
                self._evict_oldest()

    def targets(self) -> dict[str, dict[str, str]]:
        """Each target held, by its id, with its labels."""
        with self._lock:
            return {target: dict(ring[-1].labels) for target, ring in self._rings.items()}

    def last(self, target: str, count: int) -> list[LabeledProfile]:
        """The newest ``count`` profiles of ``target``, oldest first; [] if it has none."""
        with self._lock:
            ring = self._rings.get(target, ())
            return list(ring)[-count:] if count > 0 else []

    def _evict_oldest(self) -> None:
        target = min(self._rings, key=lambda t: self._rings[t][0].time_nanos)
        ring = self._rings[target]
        self._bytes -= _size(ring.popleft())
        self._evicted.inc()
        if not ring:
            del self._rings[target]


def target_id(labels: Mapping[str, str]) -> str:
    """A short, stable id of a label set, safe in a URL path."""
    key: _Key = tuple(sorted(labels.items()))
    return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]


def _size(profile: LabeledProfile) -> int:
    return len(profile.data) + sum(len(k) + len(v) for k, v in profile.labels.items())
