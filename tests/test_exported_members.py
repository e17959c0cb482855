"""Each room's __all__ is exactly its public names, sorted: adding to a surface is deliberate."""

from __future__ import annotations

import importlib
import types

import pytest

ROOMS = [
    "agent.config",
    "agent.discovery",
    "agent.ebpf",
    "agent.flamegraph",
    "agent.pprof",
    "agent.python",
    "agent.symbols",
    "agent.telemetry",
    "agent.unwind",
    "agent.write",
]


@pytest.mark.parametrize("name", ROOMS)
def test_all_lists_the_public_names_sorted(name):
    room = importlib.import_module(name)
    public = sorted(
        member
        for member in dir(room)
        if not member.startswith("_") and not isinstance(getattr(room, member), types.ModuleType)
    )
    assert room.__all__ == sorted(room.__all__)
    assert room.__all__ == public
