"""Id keys this process has confirmed: which text key each pointed at when it last read or wrote it.

An item id's key (`service.cache.keys`) can be re-pointed to another text, so unlike a text key its
value is not immutable and the near-cache never keeps it; before this, every request with an id asked
Redis for the id's key, even when its text was answered from memory. A request whose id this process
read or wrote less than ``seconds`` ago, pointing at the same text, now trusts that and does not ask.

The staleness rule: for up to ``seconds`` after this process last read or wrote an id key, it assumes
the key still points where it saw it. If in that time another process re-points the id (a request
with the same id and another text, on another replica) or `marc cache purge` removes it, a request
here with the earlier pairing does not rewrite it until the confirmation expires. A re-pointing in
this process updates its confirmation at once. ``seconds`` is kept below the cache TTL, so an id key
that expires in Redis is always read (and rewritten) again before it could be missed. A Redis call that
finds the connection lost (Redis gone or restarted: a restarted Redis may be empty) drops every
confirmation (`clear`), so the ids' keys are read, and rewritten, again; a restart is noticed at this
process's next Redis call (a miss, a lookup, a write), and until then at most ``seconds`` late.

Bounded by the bytes its entries cost in this process; the least recently used go first.
"""

from __future__ import annotations

import sys
import time

from service.cache.bounded import ByteBoundedLRU

# The two tuples of an entry, its float, and the OrderedDict slot and node (see
# service.cache.near.ENTRY_OVERHEAD_BYTES).
ENTRY_OVERHEAD_BYTES = 104 + 64 + 56 + 24

# (text key, time.monotonic() after which it is no longer trusted)
Confirmation = tuple[str, float]


def _entry_bytes(id_key: str, confirmation: Confirmation) -> int:
    # The text key's string is shared with the caller's; it is counted all the same.
    return sys.getsizeof(id_key) + sys.getsizeof(confirmation[0]) + ENTRY_OVERHEAD_BYTES


class ConfirmedIds:
    def __init__(self, max_bytes: int, seconds: float) -> None:
        self.seconds = seconds
        self._entries: ByteBoundedLRU[str, Confirmation] = ByteBoundedLRU(max_bytes, _entry_bytes)

    def points_at(self, id_key: str, text_key: str) -> bool:
        """Whether ``id_key`` was confirmed to point at ``text_key`` less than ``seconds`` ago."""
        confirmation = self._entries.get(id_key)
        return confirmation is not None and confirmation[0] == text_key and confirmation[1] > time.monotonic()

    def confirm(self, id_key: str, text_key: str) -> None:
        """``id_key`` was just read or written pointing at ``text_key``."""
        self._entries.put(id_key, (text_key, time.monotonic() + self.seconds))

    def forget(self, keys: list[str]) -> None:
        """These keys' writes failed or were dropped: read them again next time (other keys in
        ``keys`` are ignored)."""
        for key in keys:
            self._entries.pop(key)

    def clear(self) -> None:
        """Trust nothing confirmed so far (Redis was lost: it may have come back empty)."""
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        return self._entries.bytes
