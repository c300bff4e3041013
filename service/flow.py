"""The embed flow every entry shares - `POST /v1/embed`, `/v1/embeddings`, `/v1/items/lookup` and
`marc precompute` - after the request was admitted (`service.api.admission`). `EmbedFlow.embed` is one
linear pass:

    keys            -> each text normalised and hashed to its text key; each id to its id key
    read the cache  -> text keys from the near-cache (in-process), ids from the confirmed ids
                       (`service.cache.confirmed`); what is left in one read of the shared cache
                       (in the service one MGET shared with the other requests of the moment:
                       `service.cache.batched`)
    compute missing -> each new text once (the micro-batcher in the service, big encoder batches in
                       precompute), rounded as the cache will hold it
    write back      -> new text keys and changed id keys, queued for the next pipelined write (the
                       service; the answer does not wait) or written before returning (precompute)

A request whose texts and ids are all known in-process costs no Redis round trip at all.

Every key looked up is counted once in `marc_cache_requests_total`, under the tier that settled it:
``tier="near"`` for a near-cache hit, else the shared cache's tier (``redis``, or ``memory`` for the
in-process LRU) with its result - so the lookups of the shared tier are the near-cache's misses. Id
keys are not counted (they are not vectors a request asked for).

In the service a cache that fails never fails the request: its keys are counted (error, skipped or
busy) and every item is computed by the model. `marc precompute` asks for ``cache_failures="raise"``
instead: a batch job should stop (and resume later) rather than recompute a catalogue it cannot store.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypeVar

import numpy as np

from service.cache.confirmed import ConfirmedIds
from service.cache.keys import ID_KIND, KeySpace, normalise_text
from service.cache.near import NearCache
from service.cache.stores import Cache, CacheBusy, CacheSkipped, CacheTimeout, CacheUnavailable
from service.cache.values import ValueCodec
from service.embeddings import Embeddings
from service.metrics import CACHE_RESULTS, NEAR_TIER, ModelMetrics
from service.model.batcher import Embedded

log = logging.getLogger(__name__)

T = TypeVar("T")
# Tries of a lookup's Redis read that timed out (MARC_CACHE_TIMEOUT_MS each) before it answers 503.
LOOKUP_ATTEMPTS = 3
Compute = Callable[[list[str]], Awaitable[Embedded]]
# Wraps the wait for the model (the HTTP edge: cancel it when the client hangs up).
Guard = Callable[[Awaitable[T]], Awaitable[T]]


class TruncatedTexts(Exception):
    """``reject_truncated``: these rows are longer than the model's max_length tokens."""

    def __init__(self, rows: list[int]) -> None:
        super().__init__(f"rows {rows} are longer than the model's max_length")
        self.rows = rows


@dataclass(frozen=True)
class EmbedOutcome:
    rows: Embeddings  # request order
    cached: list[bool]
    queue_seconds: float = 0.0
    inference_seconds: float = 0.0
    id_keys: tuple[tuple[str, str], ...] = field(default=())
    """(id key, text key) of every item with an id: all confirmed by this request."""

    @property
    def cache_hits(self) -> int:
        return sum(self.cached)

    @property
    def all_hits(self) -> bool:
        """Everything came from the cache and no text was truncated: the answer is the same for
        every repeat of the request while its ids stay confirmed (`service.api.memo`)."""
        return all(self.cached) and not self.rows.truncated.any()


async def _unguarded(work: Awaitable[T]) -> T:
    return await work


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
        confirmed: ConfirmedIds | None = None,
    ) -> None:
        self._keys = keys
        self._cache = cache
        self._near = near
        self._confirmed = confirmed
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

    async def embed(
        self,
        texts: Sequence[str],
        ids: Sequence[str | None] | None = None,
        *,
        guard: Guard[Embedded] = _unguarded,
    ) -> EmbedOutcome:
        """Vectors for ``texts`` in order; items with an id are also stored under it (id key space).
        ``guard`` wraps the wait for the model, if there is one."""
        normalised = [normalise_text(text) for text in texts]
        text_keys = self._keys.text_keys(normalised)
        id_start = f"{self._keys.namespace}:{ID_KIND}:"
        with_id = [(row, id_start + item_id) for row, item_id in enumerate(ids or ()) if item_id]
        values = self._near_values(text_keys)
        # Id keys to read: those not confirmed in-process to point at their text already.
        confirmed = self._confirmed
        unsure = (
            [(row, key) for row, key in with_id if not confirmed.points_at(key, text_keys[row])]
            if confirmed is not None
            else with_id
        )
        asked = [row for row, value in enumerate(values) if value is None]
        id_values: list[bytes | None] = []
        if asked or unsure:
            found = await self._get(
                [text_keys[row] for row in asked] + [key for _, key in unsure], len(asked)
            )
            for row, value in zip(asked, found, strict=False):  # found also holds the id keys' values
                if value is not None:
                    values[row] = value
                    if self._near is not None:
                        self._near.put(text_keys[row], value)
            id_values = found[len(asked) :]
        cached = [value is not None for value in values]
        rows, queue_seconds, inference_seconds, writes = await self._fill(
            values, normalised, text_keys, guard
        )
        # An id key is (re)written when it holds another value than its text's now.
        stale: list[tuple[int, str]] = []
        for (row, key), stored in zip(unsure, id_values or [None] * len(unsure), strict=True):
            if stored is not None and stored == values[row]:
                self._confirm(key, text_keys[row])
            else:
                stale.append((row, key))
                writes.append((key, values[row]))  # type: ignore[arg-type]  # every row has a value now
        outcome = self._served(
            EmbedOutcome(
                rows,
                cached,
                queue_seconds,
                inference_seconds,
                tuple((key, text_keys[row]) for row, key in with_id),
            )
        )
        await self._set(writes)
        for row, key in stale:
            self._confirm(key, text_keys[row])
        return outcome

    def _near_values(self, text_keys: list[str]) -> list[bytes | None]:
        near = self._near
        if near is None:
            return [None] * len(text_keys)
        values = [near.get(key) for key in text_keys]
        hits = len(values) - values.count(None)
        if hits:
            self._near_hits.inc(hits)
        return values

    def _confirm(self, id_key: str, text_key: str) -> None:
        if self._confirmed is not None:
            self._confirmed.confirm(id_key, text_key)

    async def _fill(
        self,
        values: list[bytes | None],
        normalised: list[str],
        text_keys: list[str],
        guard: Guard[Embedded],
    ) -> tuple[Embeddings, float, float, list[tuple[str, bytes]]]:
        """Rows for every value, the missing ones computed (each new text once) and put in
        ``values``; the new text keys' entries to write."""
        missing = [row for row, value in enumerate(values) if value is None]
        if not missing:
            return self._codec.decode(values), 0.0, 0.0, []  # type: ignore[arg-type]  # no None
        first_row: dict[str, int] = {}  # each new text once, and where it first appears
        for row in missing:
            first_row.setdefault(normalised[row], row)
        computed = await guard(self._compute(list(first_row)))
        # Served as the cache will serve it later: the same answer, cached or not.
        new = Embeddings(
            self._codec.round_trip(computed.rows.vectors), computed.rows.tokens, computed.rows.truncated
        )
        new_values = self._codec.encode(new)
        entries = [(text_keys[row], value) for row, value in zip(first_row.values(), new_values, strict=True)]
        if self._near is not None:
            # The model's answer for this fingerprint and text: keep it whether Redis takes it or not.
            for key, value in entries:
                self._near.put(key, value)
        if len(missing) == len(values) and len(first_row) == len(values):
            for row, value in zip(missing, new_values, strict=True):
                values[row] = value
            return new, computed.queue_seconds, computed.inference_seconds, entries
        position = {text: index for index, text in enumerate(first_row)}
        for row in missing:
            values[row] = new_values[position[normalised[row]]]
        rows = self._codec.decode(values)  # type: ignore[arg-type]  # every row has a value now
        return rows, computed.queue_seconds, computed.inference_seconds, entries

    async def lookup(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """Vectors stored under ``ids`` (unknown ids are absent). Raises CacheUnavailable: without
        the cache there is nothing to look up."""
        if self._cache is None:
            raise CacheUnavailable("no cache to look ids up in")
        keys = [self._keys.id_key(item_id) for item_id in ids]
        # A lookup has no model to fall back on: a call that timed out (Redis slow, or this process
        # starved of CPU for a moment) is asked again; a refused or skipped Redis is not.
        for attempt in range(1, LOOKUP_ATTEMPTS + 1):
            try:
                values = self._valid(await self._cache.get_many(keys))
                break
            except CacheUnavailable as exc:
                if isinstance(exc, CacheTimeout) and attempt < LOOKUP_ATTEMPTS:
                    continue
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
        """Cache values (None = miss or unusable); an unavailable cache reads as all misses. The
        first ``counted`` keys are text keys: counted as lookups."""
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
        self._count(hits=counted - values[:counted].count(None), total=counted)
        return values

    async def _set(self, entries: list[tuple[str, bytes]]) -> None:
        """Write ``entries`` (in the service: queued, `service.cache.batched`, which counts them)."""
        if not entries or self._cache is None:
            return
        try:
            await self._cache.set_many(entries)
        except CacheUnavailable as exc:
            log.debug("cache write failed: %s", exc)
            if self._raise_cache_failures:
                raise

    def _valid(self, values: Sequence[bytes | None]) -> list[bytes | None]:
        # A value of the wrong size (another writer, a corrupted key) is a miss, never served.
        size = self._codec.value_bytes
        return [value if value is not None and len(value) == size else None for value in values]

    def _count_unavailable(self, exc: CacheUnavailable, keys: int) -> None:
        result = "error"
        if isinstance(exc, CacheSkipped | CacheBusy):
            result = "skipped" if isinstance(exc, CacheSkipped) else "busy"
        if keys:
            self._lookups[result].inc(keys)

    def _count(self, *, hits: int, total: int) -> None:
        if hits:
            self._lookups["hit"].inc(hits)
        if total - hits:
            self._lookups["miss"].inc(total - hits)
