"""A finished profile on its way out, and what receives it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = ["LabeledProfile", "Receiver", "shortened"]


@dataclass(frozen=True, slots=True)
class LabeledProfile:
    """One gzipped pprof with the series labels it is sent under."""

    labels: Mapping[str, str]
    data: bytes
    time_nanos: int


@runtime_checkable
class Receiver(Protocol):
    """Takes finished profiles. ``append`` never blocks on I/O: a receiver
    queues what it cannot handle at once, and drops and counts when full."""

    def append(self, profile: LabeledProfile) -> None: ...


def shortened(text: str, limit: int = 120) -> str:
    """``text`` for a log line or a health message: past ``limit`` characters, its
    start and its end around a count of what was cut (a label value, a path or
    an answer may be thousands of characters; their ends say the most)."""
    if len(text) <= limit:
        return text
    tail = limit // 3
    head = limit - tail
    return f"{text[:head]}…({len(text) - head - tail} characters)…{text[-tail:]}"
