"""Go-style durations (``500ms``, ``10s``, ``1h30m``), as Alloy writes them."""

from __future__ import annotations

import re

__all__ = ["parse_duration"]

_UNITS_NS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def parse_duration(text: str) -> float:
    """Return the duration in seconds; raise ``ValueError`` naming the fault.

    Like Go's ``time.ParseDuration`` except that negative durations are
    refused: nothing in Emberscope can wait for less than no time.
    """
    remaining = text.strip()
    if remaining == "0":
        return 0.0
    if not remaining:
        raise ValueError("empty duration: use a Go-style duration such as 500ms, 10s or 2m")
    total_ns = 0.0
    position = 0
    while position < len(remaining):
        match = _PART.match(remaining, position)
        if match is None:
            raise ValueError(
                f"invalid duration {text!r}: use a Go-style duration such as 500ms, 10s or 2m"
            )
        total_ns += float(match.group(1)) * _UNITS_NS[match.group(2)]
        position = match.end()
    return total_ns / 1e9
