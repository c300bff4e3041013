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
        self._entries: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        size = self._size(key, value)
        if size > self.max_bytes:
            return
        self.pop(key)
        self._entries[key] = value
        self.bytes += size
        while self.bytes > self.max_bytes:
            evicted_key, evicted = self._entries.popitem(last=False)
            self.bytes -= self._size(evicted_key, evicted)

    def pop(self, key: K) -> V | None:
        value = self._entries.pop(key, None)
        if value is not None:
            self.bytes -= self._size(key, value)
        return value

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries
