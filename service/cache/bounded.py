"""A least-recently-used map bounded by the bytes its entries cost (the near-cache's and the response
memo's store): each entry's cost is the caller's ``size(key, value)``; putting past the bound evicts
the least recently used entries, and an entry larger than the whole bound is not kept."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class ByteBoundedLRU(Generic[K, V]):
    def __init__(self, max_bytes: int, size: Callable[[K, V], int]) -> None:
        if max_bytes < 1:
            raise ValueError("a byte-bounded store needs max_bytes >= 1 (0 means: build none)")
        self.max_bytes = max_bytes
        self.bytes = 0
        self._size = size
        # Each entry keeps the size it was counted with: computed once, when it is put.
        self._entries: OrderedDict[K, tuple[V, int]] = OrderedDict()

    def get(self, key: K) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry[0]

    def put(self, key: K, value: V) -> None:
        size = self._size(key, value)
        if size > self.max_bytes:
            return
        entries = self._entries
        previous = entries.pop(key, None)
        if previous is not None:
            self.bytes -= previous[1]
        entries[key] = (value, size)
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, (_, evicted) = entries.popitem(last=False)
            self.bytes -= evicted

    def pop(self, key: K) -> V | None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return None
        self.bytes -= entry[1]
        return entry[0]

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries
