"""A small least-recently-used cache with counters, for the symbolizer's tables and processes."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["LruCache"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LruCache(Generic[K, V]):
    """Holds at most ``size`` entries; putting one more evicts the least recently used.

    The size is a hard limit, unlike the legacy agent's round-based caches
    whose LRU size could be exceeded. ``on_evict`` is called with each evicted
    key and value (to close files); ``pop`` and ``clear`` hand the value back
    instead and do not call it.

    >>> tables = LruCache(64)
    >>> tables.put(build_id, table)
    >>> tables.get(build_id)     # the table, now the most recently used; None if absent
    """

    def __init__(self, size: int, on_evict: Callable[[K, V], None] | None = None) -> None:
        if size < 1:
            raise ValueError(f"an LRU cache needs a size of at least 1, not {size}")
        self.size = size
        self._entries: OrderedDict[K, V] = OrderedDict()
        self._on_evict = on_evict
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        """Whether ``key`` is held; neither counted nor refreshed."""
        return key in self._entries

    def get(self, key: K) -> V | None:
        """The value of ``key``, marked most recently used, or None (a miss)."""
        try:
            value = self._entries[key]
        except KeyError:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return value

    def put(self, key: K, value: V) -> None:
        """Store ``value`` as the most recently used, evicting the oldest entry when full."""
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            old_key, old_value = self._entries.popitem(last=False)
            self.evictions += 1
            if self._on_evict is not None:
                self._on_evict(old_key, old_value)

    def pop(self, key: K) -> V | None:
        """Remove ``key`` and return its value (None if absent), without calling ``on_evict``."""
        return self._entries.pop(key, None)

    def items(self) -> list[tuple[K, V]]:
        """Entries from least to most recently used, for debug info; does not refresh them."""
        return list(self._entries.items())

    def stats(self) -> dict[str, int]:
        """Size, fill and counters, as debug info shows them."""
        return {
            "size": self.size,
            "len": len(self._entries),
            "hits": self.hits,
            "misses": self.misses,
            "evictions": self.evictions,
        }
