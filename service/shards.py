"""Shards of a catalogue for `marc precompute --shard i/N`: which worker embeds which item.

An item belongs to shard ``int.from_bytes(sha256(item_id as UTF-8)[:8], "big") % N``: the first 8 bytes
of the SHA-256 of its id, read as a big-endian unsigned integer, modulo the shard count. It depends on
the id alone - not on the line it is on, the file's order, the machine, or Python's per-process salted
``hash()`` - so N workers reading the same file (or files in another order) split it into N disjoint
parts that together cover every item, and a re-run of shard i gets the same items again.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

HASH_BYTES = 8


def shard_of(item_id: str, count: int) -> int:
    """The shard (0 .. count-1) of ``item_id`` among ``count`` shards."""
    digest = hashlib.sha256(item_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:HASH_BYTES], "big") % count


@dataclass(frozen=True)
class Shard:
    index: int
    """0-based, as Kubernetes' JOB_COMPLETION_INDEX."""
    count: int

    @classmethod
    def parse(cls, spec: str) -> Shard:
        """``"i/N"`` with 0 <= i < N; a ValueError that says what is wrong otherwise."""
        index_text, slash, count_text = spec.strip().partition("/")
        try:
            if not slash:
                raise ValueError
            index, count = int(index_text), int(count_text)
        except ValueError:
            raise ValueError(f"--shard: expected i/N (two integers, e.g. 0/4), got {spec!r}") from None
        if count < 1:
            raise ValueError(f"--shard: the shard count N must be at least 1, got {spec!r}")
        if not 0 <= index < count:
            raise ValueError(f"--shard: the index i must be in 0..{count - 1} (0-based), got {spec!r}")
        return cls(index, count)

    def holds(self, item_id: str) -> bool:
        return self.count == 1 or shard_of(item_id, self.count) == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"
