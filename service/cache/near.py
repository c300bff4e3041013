"""The near-cache: an in-process tier in front of Redis for text keys, bounded by bytes.

A text key (`service.cache.keys`) names the served model's fingerprint, the value layout and the
normalised text, and the value under it is what that model computes for that text: it never changes,
so a copy kept in the process never needs invalidating (a new model has new keys). Id keys are not
kept here: an id can be re-pointed to another text, so Redis stays their only tier.

A hit costs a dictionary lookup instead of a Redis round trip (the largest cost of an all-hits
request). The bound is the memory the entries take in this process - the key and value objects plus
an estimate of the dictionary's per-entry overhead - and the least recently used entries go first.
"""

from __future__ import annotations

import sys

from service.cache.bounded import ByteBoundedLRU

# What an OrderedDict entry costs besides its key and value objects: the hash table slot and the
# linked-list node that keeps the recency order: tracemalloc measured 91 B per entry over 100,000
# entries (CPython 3.11, 64-bit), rounded up for the table's growth steps.
ENTRY_OVERHEAD_BYTES = 104


def entry_bytes(key: str, value: bytes) -> int:
    """What keeping ``key`` -> ``value`` costs this process (objects and the entry's overhead)."""
    return sys.getsizeof(key) + sys.getsizeof(value) + ENTRY_OVERHEAD_BYTES


class NearCache(ByteBoundedLRU[str, bytes]):
    """LRU of text key -> value bytes holding at most ``max_bytes`` (see `entry_bytes`)."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(max_bytes, entry_bytes)
