"""The serving path (DESIGN §5): normalise -> cache keys -> one MGET (`read`) -> misses to the
micro-batcher -> one pipelined write (`complete`) -> vectors in request order. A read that found
everything is answered by `cached_outcome` without the batcher (the all-hits fast path).

A cache that fails never fails the request: its keys count as ``result="error"`` and every item is
computed by the model.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from service.batcher import MicroBatcher
from service.cache import Cache, CacheBusy, CacheSkipped, CacheUnavailable
from service.cache_values import ValueCodec
from service.keys import KeySpace, normalise_text
from service.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbedOutcome:
    vectors: np.ndarray  # float32 [n, dim], request order
    cached: list[bool]
    queue_seconds: float
    inference_seconds: float

    @property
    def cache_hits(self) -> int:
        return sum(self.cached)


@dataclass(frozen=True)
class CacheRead:
    """What the request's one MGET found: a value (or None) per text, and per item id."""

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


class EmbeddingPipeline:
    def __init__(
        self, keys: KeySpace, cache: Cache, batcher: MicroBatcher, metrics: Metrics, codec: ValueCodec
    ) -> None:
        self._keys = keys
        self._cache = cache
        self._batcher = batcher
        self._metrics = metrics
        self._codec = codec
        self._dim = codec.dim

    async def embed(self, texts: Sequence[str], ids: Sequence[str | None] | None = None) -> EmbedOutcome:
        """Vectors for ``texts``; items with an id are also stored under it (id key space)."""
        return await self.complete(await self.read(texts, ids))

    async def read(self, texts: Sequence[str], ids: Sequence[str | None] | None = None) -> CacheRead:
        """One round trip for the texts' keys and the ids' keys (the id values tell which id keys
        need (re)writing). Counts hits and misses; an unavailable cache reads as all misses."""
        normalised = [normalise_text(text) for text in texts]
        text_keys = [self._keys.text_key(text) for text in normalised]
        with_id = [(i, item_id) for i, item_id in enumerate(ids or ()) if item_id is not None]
        id_keys = [self._keys.id_key(item_id) for _, item_id in with_id]
        values = await self._read(text_keys + id_keys, counted=len(text_keys))
        split = len(text_keys)
        return CacheRead(normalised, text_keys, values[:split], with_id, id_keys, values[split:])

    def cached_outcome(self, read: CacheRead) -> EmbedOutcome | None:
        """The answer when the cache holds everything (every text hit, every id key up to date),
        else None: then `complete` runs the model and writes."""
        if any(value is None for value in read.text_values):
            return None
        id_rows = [row for row, _ in read.with_id]
        if any(read.text_values[row] != stored for row, stored in zip(id_rows, read.id_values, strict=True)):
            return None
        vectors = self._codec.decode(read.text_values)  # type: ignore[arg-type]  # no None: checked
        return EmbedOutcome(vectors, [True] * len(read.text_values), 0.0, 0.0)

    async def complete(self, read: CacheRead) -> EmbedOutcome:
        """Compute what ``read`` missed (micro-batcher), write it back in one pipelined call."""
        text_values = read.text_values
        vectors = np.empty((len(text_values), self._dim), dtype=np.float32)
        cached = [value is not None for value in text_values]
        hits = [row for row, hit in enumerate(cached) if hit]
        if hits:
            vectors[hits] = self._codec.decode([text_values[row] for row in hits])  # type: ignore[misc]
        queue_seconds = inference_seconds = 0.0
        writes: list[tuple[str, bytes]] = []
        missing = read.missing
        if missing:
            embedded = await self._batcher.embed([read.normalised[row] for row in missing])
            # Served as the cache will serve it later: the same answer, cached or not.
            vectors[missing] = self._codec.round_trip(embedded.vectors)
            queue_seconds, inference_seconds = embedded.queue_seconds, embedded.inference_seconds
            written: set[str] = set()
            for row in missing:
                if read.text_keys[row] not in written:
                    written.add(read.text_keys[row])
                    writes.append((read.text_keys[row], self._to_bytes(vectors[row])))
        for (row, _), key, stored in zip(read.with_id, read.id_keys, read.id_values, strict=True):
            value = self._to_bytes(vectors[row])
            if stored != value:
                writes.append((key, value))
        await self._write(writes)
        return EmbedOutcome(vectors, cached, queue_seconds, inference_seconds)

    async def lookup(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """Vectors stored under ``ids`` (unknown ids are absent). Raises CacheUnavailable: without
        the cache there is nothing to look up."""
        keys = [self._keys.id_key(item_id) for item_id in ids]
        try:
            values = await self._cache.get_many(keys)
        except CacheUnavailable as exc:
            self._count_unavailable(exc, len(keys))
            raise
        found = {
            item_id: self._codec.decode([value])[0]
            for item_id, value in zip(ids, self._valid(values), strict=True)
            if value is not None
        }
        self._count(hits=len(found), total=len(keys))
        return found

    async def _read(self, keys: list[str], counted: int) -> list[bytes | None]:
        """Cache values (None = miss or unusable); an unavailable cache reads as all misses."""
        try:
            values = self._valid(await self._cache.get_many(keys))
        except CacheUnavailable as exc:
            log.debug("cache read failed: %s", exc)
            self._count_unavailable(exc, counted)
            return [None] * len(keys)
        self._count(hits=sum(value is not None for value in values[:counted]), total=counted)
        return values

    async def _write(self, entries: list[tuple[str, bytes]]) -> None:
        if not entries:
            return
        try:
            await self._cache.set_many(entries)
        except CacheUnavailable as exc:
            log.debug("cache write failed: %s", exc)
            self._metrics.cache_writes.labels(result="error").inc()
        else:
            self._metrics.cache_writes.labels(result="ok").inc()

    def _valid(self, values: Sequence[bytes | None]) -> list[bytes | None]:
        # A value of the wrong size (another writer, a corrupted key) is a miss, never served.
        return [value if self._codec.valid(value) else None for value in values]

    def _count_unavailable(self, exc: CacheUnavailable, keys: int) -> None:
        result = "error"
        if isinstance(exc, CacheSkipped | CacheBusy):
            result = "skipped" if isinstance(exc, CacheSkipped) else "busy"
        self._metrics.cache_requests.labels(result=result).inc(keys)

    def _count(self, *, hits: int, total: int) -> None:
        if hits:
            self._metrics.cache_requests.labels(result="hit").inc(hits)
        if total - hits:
            self._metrics.cache_requests.labels(result="miss").inc(total - hits)

    def _to_bytes(self, vector: np.ndarray) -> bytes:
        return self._codec.encode(vector)
