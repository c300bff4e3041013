"""Everything a running service holds, built once in the app's lifespan and torn down in reverse."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable
from dataclasses import dataclass

from service.api.admission import Admission
from service.api.memo import ResponseMemo
from service.api.token_ids import load_token_decoder
from service.cache.batched import BatchedCache, LostReason
from service.cache.confirmed import ConfirmedIds
from service.cache.near import NearCache
from service.cache.stores import Cache, build_cache
from service.lifecycle import Lifecycle
from service.metrics import MEMO_TIER, SAMPLE_SECONDS, Metrics
from service.model.encoder import OnnxEncoder
from service.registry import ModelRegistry, load_verified_encoder, read_settings_models
from service.settings import Settings

log = logging.getLogger(__name__)


def load_service_encoders(settings: Settings) -> dict[str, OnnxEncoder]:
    """Every configured model verified, loaded and smoke-checked as ``settings`` say, by served name.
    Raises ArtifactError naming the file, or ModelSetError."""
    config = read_settings_models(settings)
    return {
        name: load_verified_encoder(source.directory, settings) for name, source in config.sources.items()
    }


@dataclass
class ServiceRuntime:
    settings: Settings
    metrics: Metrics
    models: ModelRegistry
    cache: Cache
    admission: Admission
    lifecycle: Lifecycle
    memo: ResponseMemo | None = None  # all-hits answers by request body (service.api.memo)
    sampler: asyncio.Task[None] | None = None  # writes the sampled gauges (multiprocess metrics)

    @property
    def draining(self) -> bool:
        return self.lifecycle.draining

    @classmethod
    async def start(
        cls,
        settings: Settings,
        metrics: Metrics,
        lifecycle: Lifecycle,
        encoders: dict[str, OnnxEncoder] | None = None,
    ) -> ServiceRuntime:
        """Bring the service up on ``encoders`` (by served name; the others are loaded here, off the
        loop: loading verifies sha256 of every file and builds the ORT session, seconds each)."""
        cache = build_cache(
            settings.redis_url,
            cluster=settings.redis_cluster,
            ttl_seconds=settings.cache_ttl_seconds,
            timeout_seconds=settings.cache_timeout_ms / 1000,
            retry_seconds=settings.cache_retry_seconds,
            timeouts_to_open=settings.cache_breaker_timeouts,
            max_connections=settings.redis_max_connections,
            lru_max_items=settings.lru_max_items,
        )
        confirmed = None
        if cache.backend == "redis" and settings.confirmed_ids_seconds and settings.confirmed_ids_bytes:
            confirmed = ConfirmedIds(settings.confirmed_ids_bytes, settings.confirmed_ids_seconds)
        if cache.backend == "redis":
            cache = _batched(cache, settings, metrics, confirmed)
        metrics.sample(metrics.cache_skipped, lambda: float(cache.status() == "skipped"))
        if not await cache.ping():
            log.warning(
                "cache %s not reachable at start-up; serving from the model until it is", cache.backend
            )
        # In front of Redis only (in front of the in-process LRU it would be a second copy); one for
        # every model: text keys carry the model's fingerprint.
        near = (
            NearCache(settings.near_cache_bytes)
            if settings.near_cache_bytes and cache.backend == "redis"
            else None
        )
        models = ModelRegistry(settings, metrics, cache, near, confirmed)
        await models.start(encoders)
        log.info(
            "serving %d model(s) (default %s) with %s cache (%s values)",
            len(models.names),
            models.default_name,
            cache.backend,
            settings.cache_dtype,
        )
        admission = Admission(
            settings, await asyncio.to_thread(load_token_decoder, settings.openai_token_encoding)
        )
        # Everything loaded so far lives as long as the process: move it out of the collector's
        # sight, or every full collection walks it again (~60 ms with the default artifact, a stall
        # that shows in p99 and can push Redis calls past their timeout).
        gc.collect()
        gc.freeze()
        memo = None
        if settings.response_memo_bytes:
            hits = metrics.cache_requests.labels(tier=MEMO_TIER, result="hit")
            memo = ResponseMemo(settings.response_memo_bytes, hits, confirmed)
        for name, store in (("near", near), ("memo", memo), ("confirmed_ids", confirmed)):
            if store is not None:
                metrics.sample(metrics.in_process_cache_bytes.labels(cache=name), _bytes_of(store))
        runtime = cls(settings, metrics, models, cache, admission, lifecycle, memo)
        if metrics.multiprocess:
            runtime.sampler = asyncio.get_running_loop().create_task(_sample(metrics), name="marc-metrics")
        return runtime

    async def stop(self) -> None:
        self.lifecycle.draining = True
        if self.sampler is not None:
            self.sampler.cancel()
        self.admission.close()
        await self.models.stop()
        await self.cache.close()


def _batched(cache: Cache, settings: Settings, metrics: Metrics, confirmed: ConfirmedIds | None) -> Cache:
    """``cache`` (Redis) behind one read per loop turn and queued writes (`service.cache.batched`),
    counted; an id whose write is lost is no longer trusted to be in Redis, and no id at all once the
    connection to Redis was lost (it may have restarted empty)."""
    writes = {result: metrics.cache_writes.labels(result=result) for result in ("ok", "error")}

    def lost(keys: list[str], reason: LostReason) -> None:
        if reason == "dropped":
            metrics.cache_writes_dropped.inc(len(keys))
        if confirmed is not None:
            confirmed.forget(keys)

    return BatchedCache(
        cache,
        max_pending=settings.cache_write_queue_items,
        on_write=lambda result: writes[result].inc(),
        on_lost=lost,
        on_disconnected=confirmed.clear if confirmed is not None else lambda: None,
    )


async def _sample(metrics: Metrics) -> None:
    while True:
        metrics.refresh()
        await asyncio.sleep(SAMPLE_SECONDS)


def _bytes_of(store: NearCache | ResponseMemo | ConfirmedIds) -> Callable[[], float]:
    return lambda: float(store.bytes)
