"""Answers to all-hits requests kept by their exact body, so a repeat is answered with the same bytes.

A recommender asks for the same popular items again and again, often with byte-identical bodies
(one item, the same text). Such an answer is fully decided by the route, the body and the served
models: every vector it carries is immutable for its model's fingerprint (the reason the near-cache
needs no invalidation), and the answer's JSON is deterministic. So a repeat skips the parse, the key
hashing, the cache lookups, the decoding and the serialisation; it still passes the key, content-type,
size and read checks, and its items still count as cache hits (under ``tier="memo"``).

Kept only: all-hits answers (nothing computed), no truncated text (those are counted per request),
from bodies of at most ``MEMO_MAX_BODY_BYTES``. An answer with item ids is repeated only while every
one of its ids is still confirmed in this process to point at its text (`service.cache.confirmed`):
an id can be re-pointed to another text, so once its confirmation expires (or another request here
re-points it) the request goes the whole way again, reads the id's key and rewrites it if needed.
Any change of the served models (a reload) makes every kept answer stale: entries remember the
registry's generation. Bounded by bytes, least recently used first.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from prometheus_client import Counter

from service.cache.bounded import ByteBoundedLRU
from service.cache.confirmed import ConfirmedIds

# Bodies above this are not kept: single- and few-item requests are the ones that repeat, and the
# bound keeps one entry small next to MARC_RESPONSE_MEMO_BYTES.
MEMO_MAX_BODY_BYTES = 2048
# An entry's cost besides its key and answer bytes: the dict slot and the entry object (tracemalloc
# ~250 B on CPython 3.11, rounded up).
ENTRY_OVERHEAD_BYTES = 320
ID_PAIR_BYTES = 64  # the tuple holding an (id key, text key) pair and its slot in the answer's tuple


@dataclass(frozen=True, eq=False)
class MemoAnswer:
    body: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    generation: int
    """The registry's generation when the request chose its model: another generation = stale."""
    items: int
    """Cache lookups the answer stands for: a repeat counts them as hits under tier "memo"."""
    id_keys: tuple[tuple[str, str], ...] = ()
    """(id key, text key) of the request's items with an id: each must still be confirmed."""


def _entry_bytes(key: tuple[str, bytes], answer: MemoAnswer) -> int:
    ids = sum(
        sys.getsizeof(id_key) + sys.getsizeof(text_key) + ID_PAIR_BYTES for id_key, text_key in answer.id_keys
    )
    return sys.getsizeof(key[1]) + sys.getsizeof(answer.body) + ENTRY_OVERHEAD_BYTES + ids


class ResponseMemo:
    """(route, request body) -> `MemoAnswer`, at most ``max_bytes`` (see `_entry_bytes`). An answer
    holds bytes and counts only, never the model that computed it: a retired model is freed at once."""

    def __init__(self, max_bytes: int, hits: Counter, confirmed: ConfirmedIds | None = None) -> None:
        self._answers: ByteBoundedLRU[tuple[str, bytes], MemoAnswer] = ByteBoundedLRU(max_bytes, _entry_bytes)
        self._hits = hits  # marc_cache_requests_total{tier="memo", result="hit"}
        self._confirmed = confirmed  # without it, answers with ids are never kept

    @property
    def max_bytes(self) -> int:
        return self._answers.max_bytes

    @property
    def bytes(self) -> int:
        return self._answers.bytes

    def get(self, route: str, body: bytes, generation: int) -> MemoAnswer | None:
        """The kept answer to ``body`` (its items counted as memo hits), or None."""
        if len(body) > MEMO_MAX_BODY_BYTES:  # never kept; and hashing a big body would cost the loop
            return None
        answer = self._answers.get((route, body))
        if answer is None:
            return None
        if answer.generation != generation:  # the served models changed since
            self._answers.pop((route, body))
            return None
        confirmed = self._confirmed
        if answer.id_keys and (
            confirmed is None
            or not all(confirmed.points_at(id_key, text_key) for id_key, text_key in answer.id_keys)
        ):
            return None  # an id to check again in Redis: the request goes the whole way (and re-keeps)
        self._hits.inc(answer.items)
        return answer

    def put(self, route: str, body: bytes, answer: MemoAnswer) -> None:
        if len(body) <= MEMO_MAX_BODY_BYTES and (self._confirmed is not None or not answer.id_keys):
            self._answers.put((route, body), answer)

    def __len__(self) -> int:
        return len(self._answers)
