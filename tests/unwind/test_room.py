"""The unwind room's surface: __all__ is exactly its public names, sorted."""

from __future__ import annotations

import types

import agent.unwind as room


def test_all_lists_the_public_names_sorted():
    public = sorted(
        name
        for name in dir(room)
        if not name.startswith("_") and not isinstance(getattr(room, name), types.ModuleType)
    )
    assert room.__all__ == sorted(room.__all__) == public
