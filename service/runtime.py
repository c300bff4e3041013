"""Everything a running service holds, built once in the app's lifespan and torn down in reverse."""

from __future__ import annotations

import asyncio
import gc
import logging
from dataclasses import dataclass

from service.api.admission import Admission
from service.api.token_ids import load_token_decoder
from service.cache.keys import KeySpace
from service.cache.near import NearCache
from service.cache.stores import Cache, build_cache
from service.cache.values import ValueCodec
from service.flow import EmbedFlow
from service.lifecycle import Lifecycle
from service.metrics import SAMPLE_SECONDS, Metrics
from service.model.batcher import MicroBatcher
from service.model.encoder import OnnxEncoder, load_encoder
from service.settings import Settings

log = logging.getLogger(__name__)


def load_service_encoder(settings: Settings) -> OnnxEncoder:
    """The artifact verified and loaded as ``settings`` say. Raises ArtifactError naming the file."""
    return load_encoder(
        settings.artifact,
        variant=settings.variant,
        provider=settings.provider,
        cuda_device_id=settings.cuda_device_id,
        intra_threads=settings.ort_intra_threads,
        inter_threads=settings.ort_inter_threads,
    )


@dataclass
class ServiceRuntime:
    settings: Settings
    metrics: Metrics
    encoder: OnnxEncoder
    cache: Cache
    batcher: MicroBatcher
    admission: Admission
    flow: EmbedFlow
    lifecycle: Lifecycle
    sampler: asyncio.Task[None] | None = None  # writes the sampled gauges (multiprocess metrics)

    @property
    def draining(self) -> bool:
        return self.lifecycle.draining

    @property
    def fingerprint(self) -> str:
        return self.encoder.artifact.fingerprint

    @classmethod
    async def start(
        cls,
        settings: Settings,
        metrics: Metrics,
        lifecycle: Lifecycle,
        encoder: OnnxEncoder | None = None,
    ) -> ServiceRuntime:
        """Bring the service up on ``encoder`` (loaded here, off the loop, when not given)."""
        if encoder is None:
            # Loading verifies sha256 of every file and builds the ORT session: seconds, off the loop.
            encoder = await asyncio.to_thread(load_service_encoder, settings)
        artifact = encoder.artifact
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
        metrics.sample(metrics.cache_skipped, lambda: float(cache.status() == "skipped"))
        if not await cache.ping():
            log.warning(
                "cache %s not reachable at start-up; serving from the model until it is", cache.backend
            )
        batcher = MicroBatcher(
            encoder,
            metrics,
            max_batch_size=settings.max_batch_size,
            max_wait_ms=settings.max_wait_ms,
            max_queue_items=settings.max_queue_items,
            pipeline_windows=settings.pipeline_windows,
        )
        batcher.start()
        keys = KeySpace(settings.cache_prefix, artifact.fingerprint, settings.cache_dtype)
        metrics.model_info.labels(
            name=artifact.name,
            fingerprint=artifact.fingerprint,
            layer=str(artifact.manifest.backbone.layer),
            dim=str(artifact.dim),
            provider=encoder.provider,
            variant=artifact.variant,
        ).set(1)
        log.info(
            "serving %s (variant %s, dim %d, fingerprint %s) with %s cache (%s values)",
            artifact.name,
            artifact.variant,
            artifact.dim,
            artifact.fingerprint[:16],
            cache.backend,
            settings.cache_dtype,
        )
        flow = EmbedFlow(
            keys,
            cache,
            batcher.embed,
            ValueCodec(settings.cache_dtype, artifact.dim),
            metrics,
            reject_truncated=settings.reject_truncated,
            # In front of Redis only: in front of the in-process LRU it would be a second copy.
            near=NearCache(settings.near_cache_bytes)
            if settings.near_cache_bytes and cache.backend == "redis"
            else None,
        )
        admission = Admission(
            settings, await asyncio.to_thread(load_token_decoder, settings.openai_token_encoding)
        )
        # Everything loaded so far lives as long as the process: move it out of the collector's
        # sight, or every full collection walks it again (~60 ms with the default artifact, a stall
        # that shows in p99 and can push Redis calls past their timeout).
        gc.collect()
        gc.freeze()
        runtime = cls(settings, metrics, encoder, cache, batcher, admission, flow, lifecycle)
        if metrics.multiprocess:
            runtime.sampler = asyncio.get_running_loop().create_task(_sample(metrics), name="marc-metrics")
        return runtime

    async def stop(self) -> None:
        self.lifecycle.draining = True
        if self.sampler is not None:
            self.sampler.cancel()
        self.admission.close()
        await self.batcher.stop()
        await self.cache.close()


async def _sample(metrics: Metrics) -> None:
    while True:
        metrics.refresh()
        await asyncio.sleep(SAMPLE_SECONDS)
