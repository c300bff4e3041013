"""The embed flow every entry shares - `POST /v1/embed` (all hits or not), `/v1/embeddings`,
`/v1/items/lookup` and `marc precompute` - after the request was admitted (`service.api.admission`):

    read the cache  -> the near-cache (in-process, text keys), then one round trip to the shared
                       cache for the texts' keys it missed and the ids' keys (`read`)
    compute missing -> each new text once (the micro-batcher in the service, big encoder batches in
                       precompute), rounded as the cache will hold it (`complete`)
    write back      -> one pipelined call for new text keys and changed id keys (`complete`)

A read that found everything is answered by `cached_outcome` without computing anything.

Every key looked up is counted once in `marc_cache_requests_total`, under the tier that settled it:
``tier="near"`` for a near-cache hit, else the shared cache's tier (``redis``, or ``memory`` for the
in-process LRU) with its result - so the lookups of the shared tier are the near-cache's misses.

In the service a cache that fails never fails the request: its keys are counted (error, skipped or
busy) and every item is computed by the model. `marc precompute` asks for ``cache_failures="raise"``
instead: a batch job should stop (and resume later) rather than recompute a catalogue it cannot store.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from service.cache.keys import KeySpace, normalise_text
from service.cache.near import NearCache
from service.cache.stores import Cache, CacheBusy, CacheSkipped, CacheUnavailable
from service.cache.values import Embeddings, ValueCodec
from service.metrics import CACHE_RESULTS, NEAR_TIER, ModelMetrics
from service.model.batcher import Embedded

log = logging.getLogger(__name__)

Compute = Callable[[list[str]], Awaitable[Embedded]]


class TruncatedTexts(Exception):
    """``reject_truncated``: these rows are longer than the model's max_length tokens."""

    def __init__(self, rows: list[int]) -> None:
        super().__init__(f"rows {rows} are longer than the model's max_length")
        self.rows = rows


@dataclass(frozen=True)
class EmbedOutcome:
    rows: Embeddings  # request order
    cached: list[bool]
    queue_seconds: float
    inference_seconds: float

    @property
    def cache_hits(self) -> int:
        return sum(self.cached)

    @property
    def all_hits(self) -> bool:
        """Everything came from the cache and no text was truncated: the answer is the same for
        every repeat of the request (`service.api.memo`)."""
        return all(self.cached) and not self.rows.truncated.any()


@dataclass(frozen=True)
class CacheRead:
    """What the request's one cache read found: a value (or None) per text, and per item id."""

    normalised: list[str]
    text_keys: list[str]
    text_values: list[bytes | None]
    with_id: list[tuple[int, str]]  # (row, id) of the items that carry an id
    id_keys: list[str]
    id_values: list[bytes | None]

    @property
    def missing(self) -> list[int]:
        """Rows the model has to compute."""
        return [row for row, value in enumerate(self.text_values) if value is None]


class EmbedFlow:
    def __init__(
        self,
        keys: KeySpace,
        cache: Cache | None,
        compute: Compute,
        codec: ValueCodec,
        metrics: ModelMetrics,
        *,
        cache_failures: Literal["serve", "raise"] = "serve",
        reject_truncated: bool = False,
        near: NearCache | None = None,
    ) -> None:
        self._keys = keys
        self._cache = cache
        self._near = near
        self._compute = compute
        self._codec = codec
        self._metrics = metrics
        self._raise_cache_failures = cache_failures == "raise"
        self._reject_truncated = reject_truncated
        # Counter children looked up once: labels() takes a lock and builds a key on every call.
        tier = cache.backend if cache is not None else "none"
        self._lookups = {
            result: metrics.cache_requests.labels(tier=tier, result=result) for result in CACHE_RESULTS
        }
        self._near_hits = metrics.cache_requests.labels(tier=NEAR_TIER, result="hit")

    @property
    def near(self) -> NearCache | None:
        """The near-cache in front of the shared cache, if any."""
        return self._near

    async def embed(self, texts: Sequence[str], ids: Sequence[str | None] | None = None) -> EmbedOutcome:
        """Vectors for ``texts``; items with an id are also stored under it (id key space)."""
        read = await self.read(texts, ids)
        return self.cached_outcome(read) or await self.complete(read)

    async def read(self, texts: Sequence[str], ids: Sequence[str | None] | None = None) -> CacheRead:
        """One round trip for the texts' keys and the ids' keys (the id values tell which id keys
        need (re)writing). Counts hits and misses; an unavailable cache reads as all misses."""
        normalised = [normalise_text(text) for text in texts]
        text_keys = [self._keys.text_key(text) for text in normalised]
        with_id = [(i, item_id) for i, item_id in enumerate(ids or ()) if item_id is not None]
        id_keys = [self._keys.id_key(item_id) for _, item_id in with_id]
        near = self._near
        if near is None:
            values = await self._get(text_keys + id_keys, counted=len(text_keys))
            split = len(text_keys)
            return CacheRead(normalised, text_keys, values[:split], with_id, id_keys, values[split:])
        text_values = [near.get(key) for key in text_keys]
        asked = [row for row, value in enumerate(text_values) if value is None]
        if len(asked) < len(text_keys):
            self._near_hits.inc(len(text_keys) - len(asked))
        if not asked and not id_keys:
            return CacheRead(normalised, text_keys, text_values, with_id, id_keys, [])
        values = await self._get([text_keys[row] for row in asked] + id_keys, counted=len(asked))
        for row, value in zip(asked, values, strict=False):  # values also holds the id keys' values
            if value is not None:
                text_values[row] = value
                near.put(text_keys[row], value)
        return CacheRead(normalised, text_keys, text_values, with_id, id_keys, values[len(asked) :])

    def cached_outcome(self, read: CacheRead) -> EmbedOutcome | None:
        """The answer when the cache holds everything (every text hit, every id key up to date),
        else None: then `complete` computes and writes."""
        if any(value is None for value in read.text_values):
            return None
        id_rows = [row for row, _ in read.with_id]
        if any(read.text_values[row] != stored for row, stored in zip(id_rows, read.id_values, strict=True)):
            return None
        rows = self._codec.decode(read.text_values)  # type: ignore[arg-type]  # no None: checked
        return self._served(EmbedOutcome(rows, [True] * len(read.text_values), 0.0, 0.0))

    async def complete(self, read: CacheRead) -> EmbedOutcome:
        """Compute what ``read`` missed (each new text once), write it back in one pipelined call."""
        rows = Embeddings.empty(len(read.text_values), self._codec.dim)
        values = list(read.text_values)
        cached = [value is not None for value in values]
        hits = [row for row, hit in enumerate(cached) if hit]
        if hits:
            rows.put(hits, self._codec.decode([values[row] for row in hits]))  # type: ignore[misc]
        missing = read.missing
        queue_seconds = inference_seconds = 0.0
        writes: list[tuple[str, bytes]] = []
        if missing:
            first_row: dict[str, int] = {}  # each new text once, and where it first appears
            for row in missing:
                first_row.setdefault(read.normalised[row], row)
            computed = await self._compute(list(first_row))
            queue_seconds, inference_seconds = computed.queue_seconds, computed.inference_seconds
            # Served as the cache will serve it later: the same answer, cached or not.
            new = Embeddings(
                self._codec.round_trip(computed.rows.vectors), computed.rows.tokens, computed.rows.truncated
            )
            new_values = self._codec.encode(new)
            position = {text: index for index, text in enumerate(first_row)}
            rows.put(missing, new.take([position[read.normalised[row]] for row in missing]))
            for row in missing:
                values[row] = new_values[position[read.normalised[row]]]
            writes += [(read.text_keys[row], values[row]) for row in first_row.values()]  # type: ignore[misc]
            if self._near is not None:
                # The model's answer for this fingerprint and text: keep it whether Redis takes it or not.
                for key, value in writes:
                    self._near.put(key, value)
        outcome = self._served(EmbedOutcome(rows, cached, queue_seconds, inference_seconds))
        for (row, _), key, stored in zip(read.with_id, read.id_keys, read.id_values, strict=True):
            if values[row] != stored:
                writes.append((key, values[row]))  # type: ignore[arg-type]  # every row has a value now
        await self._set(writes)
        return outcome

    async def lookup(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """Vectors stored under ``ids`` (unknown ids are absent). Raises CacheUnavailable: without
        the cache there is nothing to look up."""
        if self._cache is None:
            raise CacheUnavailable("no cache to look ids up in")
        keys = [self._keys.id_key(item_id) for item_id in ids]
        try:
            values = self._valid(await self._cache.get_many(keys))
        except CacheUnavailable as exc:
            self._count_unavailable(exc, len(keys))
            raise
        found = [(item_id, value) for item_id, value in zip(ids, values, strict=True) if value is not None]
        self._count(hits=len(found), total=len(keys))
        vectors = self._codec.decode([value for _, value in found]).vectors if found else []
        return {item_id: vector for (item_id, _), vector in zip(found, vectors, strict=True)}

    def _served(self, outcome: EmbedOutcome) -> EmbedOutcome:
        """``outcome`` if it may be answered (strict truncation), counted as served."""
        if not outcome.rows.truncated.any():
            return outcome
        truncated = np.flatnonzero(outcome.rows.truncated).tolist()
        if self._reject_truncated:
            raise TruncatedTexts(truncated)
        self._metrics.items_truncated.inc(len(truncated))
        return outcome

    async def _get(self, keys: list[str], counted: int) -> list[bytes | None]:
        """Cache values (None = miss or unusable); an unavailable cache reads as all misses."""
        if self._cache is None:
            return [None] * len(keys)
        try:
            values = self._valid(await self._cache.get_many(keys))
        except CacheUnavailable as exc:
            log.debug("cache read failed: %s", exc)
            self._count_unavailable(exc, counted)
            if self._raise_cache_failures:
                raise
            return [None] * len(keys)
        self._count(hits=sum(value is not None for value in values[:counted]), total=counted)
        return values

    async def _set(self, entries: list[tuple[str, bytes]]) -> None:
        if not entries or self._cache is None:
            return
        try:
            await self._cache.set_many(entries)
        except CacheUnavailable as exc:
            log.debug("cache write failed: %s", exc)
            self._metrics.cache_writes.labels(result="error").inc()
            if self._raise_cache_failures:
                raise
        else:
            self._metrics.cache_writes.labels(result="ok").inc()

    def _valid(self, values: Sequence[bytes | None]) -> list[bytes | None]:
        # A value of the wrong size (another writer, a corrupted key) is a miss, never served.
        return [value if self._codec.valid(value) else None for value in values]

    def _count_unavailable(self, exc: CacheUnavailable, keys: int) -> None:
        result = "error"
        if isinstance(exc, CacheSkipped | CacheBusy):
            result = "skipped" if isinstance(exc, CacheSkipped) else "busy"
        self._lookups[result].inc(keys)

    def _count(self, *, hits: int, total: int) -> None:
        if hits:
            self._lookups["hit"].inc(hits)
        if total - hits:
            self._lookups["miss"].inc(total - hits)
