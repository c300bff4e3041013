"""The served models by name, and their zero-downtime reload.

Each model has its own encoder (ONNX Runtime session), micro-batcher (its own queue, limit and worker
thread: a slow or flooded model cannot starve another) and embed flow (its own cache key space, keyed
by its fingerprint, over the shared cache). A request leases the model its ``model`` names (missing:
the default) after admission and returns the lease when its answer is built: the vectors, the
fingerprint and the name in the answer all come from the one model it leased.

A reload (SIGHUP, ``POST /admin/reload``) re-reads the model configuration (`service.model.sources`)
and, one reload at a time:

1. loads every added or changed artifact beside the serving ones: the verified loader (size and
   sha256 of every file, fingerprints, tokenizer), the session's inputs and output, the smoke check
   (`service.model.smoke`), a started batcher. If any fails, the ones just loaded are stopped, the
   models served before keep serving, and the reload fails naming the model and why (the log, the
   ``marc_model_reloads_total{result="failed"}`` counter and the admin answer say so);
2. swaps the name -> model table in one assignment: a request leases either the old model or the new
   one, never a mix;
3. retires each replaced or removed model once its leases are returned (requests in flight on it
   finish on it), then stops its batcher (what it has queued is still computed) and drops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from artifact.loader import LoadedArtifact
from artifact.names import ArtifactError
from service.cache.confirmed import ConfirmedIds
from service.cache.keys import KeySpace
from service.cache.near import NearCache
from service.cache.stores import Cache
from service.cache.values import ValueCodec
from service.flow import EmbedFlow
from service.memory import return_freed_memory
from service.metrics import Metrics
from service.model.batcher import MicroBatcher
from service.model.encoder import OnnxEncoder, load_encoder
from service.model.smoke import smoke_check
from service.model.sources import ModelSet, ModelSetError, ModelSource, UnknownModel, read_model_set
from service.settings import ServingPlan, Settings

log = logging.getLogger(__name__)

# How long a retired model waits for the requests that leased it before its batcher is stopped anyway.
RETIRE_TIMEOUT_SECONDS = 60.0

Change = Literal["added", "swapped", "unchanged", "removed"]


def read_settings_models(settings: Settings, current_default: str | None = None) -> ModelSet:
    return read_model_set(settings.artifact, settings.artifacts, settings.default_model, current_default)


def load_verified_encoder(directory: Path, settings: Settings) -> OnnxEncoder:
    """The artifact in ``directory`` verified, loaded as ``settings`` say and smoke-checked. Raises
    ArtifactError naming the file. Blocking (seconds for a real artifact): call it off the loop."""
    encoder = load_encoder(
        directory,
        variant=settings.variant,
        provider=settings.provider,
        cuda_device_id=settings.cuda_device_id,
        intra_threads=settings.serving_intra_threads,
        inter_threads=settings.ort_inter_threads,
        int8_min_speedup=settings.int8_min_speedup,
    )
    smoke_check(encoder)
    return encoder


@dataclass(eq=False)
class ServedModel:
    name: str  # the served name requests select it by
    source: ModelSource
    encoder: OnnxEncoder
    batcher: MicroBatcher
    flow: EmbedFlow
    info_labels: dict[str, str]
    plan: ServingPlan  # the batching settings, resolved for the provider the session came up on
    leases: int = 0
    _returned: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def artifact(self) -> LoadedArtifact:
        return self.encoder.artifact

    @property
    def fingerprint(self) -> str:
        return self.encoder.artifact.fingerprint

    @property
    def dim(self) -> int:
        return self.encoder.artifact.dim

    @property
    def max_length(self) -> int:
        return self.encoder.artifact.max_length

    def release(self) -> None:
        self.leases -= 1
        if self.leases == 0:
            self._returned.set()

    async def retire(self, timeout_seconds: float = RETIRE_TIMEOUT_SECONDS) -> None:
        """Wait for the requests that leased this model, then stop its batcher."""
        deadline = time.monotonic() + timeout_seconds
        while self.leases > 0 and time.monotonic() < deadline:
            self._returned.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._returned.wait(), max(0.0, deadline - time.monotonic()))
        if self.leases > 0:
            log.warning(
                "model %s: %d requests still running after %.0f s; stopping it",
                self.name,
                self.leases,
                timeout_seconds,
            )
        await self.batcher.stop()


@dataclass(frozen=True)
class ModelChange:
    name: str
    change: Change
    fingerprint: str | None  # the one served now (None: removed)
    previous_fingerprint: str | None  # the one served before (None: added)


@dataclass(frozen=True)
class ReloadReport:
    trigger: str
    default: str
    changes: list[ModelChange]
    seconds: float

    @property
    def changed(self) -> bool:
        return any(change.change != "unchanged" for change in self.changes)


class ReloadFailed(Exception):
    """A reload was refused; the models served before keep serving."""

    def __init__(self, model: str | None, reason: str, serving: dict[str, str]) -> None:
        where = f"model {model!r}: " if model else ""
        still = ", ".join(f"{name} ({fingerprint[:16]})" for name, fingerprint in serving.items())
        super().__init__(f"reload refused: {where}{reason}; still serving {still}")
        self.model = model
        self.reason = reason


class ModelRegistry:
    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        cache: Cache,
        near: NearCache | None = None,
        confirmed: ConfirmedIds | None = None,
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._cache = cache
        self._near = near
        self.confirmed = confirmed
        """The ids this process has confirmed (`service.cache.confirmed`), shared by every model."""
        self._models: dict[str, ServedModel] = {}  # replaced whole, never changed in place
        self._default = ""
        self._single = True
        self._lock = asyncio.Lock()  # one reload at a time
        self.generation = 0
        """Changes whenever the served models do (answers kept for earlier ones are stale)."""

    # --- serving ----------------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        return list(self._models)

    @property
    def default_name(self) -> str:
        return self._default

    @property
    def default(self) -> ServedModel:
        return self._models[self._default]

    def models(self) -> list[ServedModel]:
        return list(self._models.values())

    def resolve(self, name: str | None, *, any_name: bool = False) -> ServedModel:
        """The model ``name`` selects: None = the default. ``any_name``: a name that is not served
        selects the default too while this is the single-model service (MARC_ARTIFACT), as
        /v1/embeddings always did for OpenAI clients that send their own model names."""
        models = self._models
        if name is None:
            return models[self._default]
        served = models.get(name)
        if served is None:
            if any_name and self._single:
                return models[self._default]
            raise UnknownModel(name, list(models))
        return served

    @contextlib.contextmanager
    def lease(self, name: str | None, *, any_name: bool = False) -> Iterator[ServedModel]:
        """The model ``name`` selects, kept from being retired until the block ends."""
        served = self.resolve(name, any_name=any_name)
        served.leases += 1  # no await between the lookup and this: a swap cannot come in between
        try:
            yield served
        finally:
            served.release()

    # --- loading ------------------------------------------------------------------------------------

    async def _load(self, source: ModelSource, encoder: OnnxEncoder | None = None) -> ServedModel:
        settings = self._settings
        if encoder is None:
            encoder = await asyncio.to_thread(load_verified_encoder, source.directory, settings)
        metrics = self._metrics.for_model(source.name)
        plan = settings.serving_plan(encoder.device)
        encoder.io_binding = plan.io_binding
        batcher = MicroBatcher(
            encoder,
            metrics,
            max_batch_size=plan.max_batch_size,
            max_wait_ms=settings.max_wait_ms,
            max_queue_items=settings.max_queue_items,
            pipeline_windows=settings.pipeline_windows,
            model_runners=plan.model_runners,
            max_batch_tokens=plan.max_batch_tokens,
        )
        batcher.start()
        artifact = encoder.artifact
        flow = EmbedFlow(
            KeySpace(settings.cache_prefix, artifact.fingerprint, settings.cache_dtype),
            self._cache,
            batcher.embed,
            ValueCodec(settings.cache_dtype, artifact.dim),
            metrics,
            reject_truncated=settings.reject_truncated,
            near=self._near,
            confirmed=self.confirmed,
        )
        labels = {
            "model": source.name,
            "name": artifact.name,
            "fingerprint": artifact.fingerprint,
            "layer": str(artifact.manifest.backbone.layer),
            "dim": str(artifact.dim),
            "provider": encoder.provider,
            "variant": artifact.variant,
        }
        return ServedModel(source.name, source, encoder, batcher, flow, labels, plan)

    async def start(self, preloaded: dict[str, OnnxEncoder] | None = None) -> None:
        """Load the configured models (``preloaded``: encoders already loaded and checked, by name)."""
        config = read_settings_models(self._settings)
        preloaded = preloaded or {}
        models = {}
        for name, source in config.sources.items():
            models[name] = await self._load(source, preloaded.get(name))
        self._install(models, config)
        for served in models.values():
            self._announce(served)

    def _install(self, models: dict[str, ServedModel], config: ModelSet) -> None:
        self._models, self._default, self._single = models, config.default, config.single
        self.generation += 1

    def _announce(self, served: ServedModel) -> None:
        self._metrics.model_info.labels(**served.info_labels).set(1)
        artifact = served.artifact
        log.info(
            "serving model %s: %s (variant %s: %s; dim %d, fingerprint %s) from %s on %s: %s",
            served.name,
            artifact.name,
            artifact.variant,
            served.encoder.variant_choice.why,
            artifact.dim,
            artifact.fingerprint[:16],
            served.source.directory,
            served.encoder.provider,
            served.plan.describe(),
        )

    # --- reloading ----------------------------------------------------------------------------------

    async def reload(self, trigger: str) -> ReloadReport:
        """Re-read the configuration and swap what changed (see the module docstring). Raises
        ReloadFailed (logged and counted) and leaves the served models as they were."""
        async with self._lock:
            started = time.perf_counter()
            try:
                report = await self._reload(trigger)
            except ReloadFailed as exc:
                self._metrics.model_reloads.labels(result="failed").inc()
                log.error("reload (%s) failed: %s", trigger, exc)
                raise
            if any(change.change in ("swapped", "removed") for change in report.changes):
                # _reload has returned: its locals, the last references to the old models, are gone.
                await asyncio.to_thread(return_freed_memory)
            self._metrics.model_reloads.labels(result="ok").inc()
            report = ReloadReport(
                report.trigger, report.default, report.changes, time.perf_counter() - started
            )
            summary = ", ".join(f"{c.name} {c.change}" for c in report.changes)
            log.info(
                "reload (%s) done in %.1f s: %s; default %s", trigger, report.seconds, summary, report.default
            )
            return report

    async def _reload(self, trigger: str) -> ReloadReport:
        current = self._models
        serving = {name: served.fingerprint for name, served in current.items()}
        try:
            config = await asyncio.to_thread(read_settings_models, self._settings, self._default)
        except (ModelSetError, ArtifactError) as exc:
            raise ReloadFailed(None, str(exc), serving) from None
        wanted = config.sources
        changed = [
            source
            for name, source in wanted.items()
            if name not in current or not current[name].source.same_artifact(source)
        ]
        loaded: dict[str, ServedModel] = {}
        for source in changed:
            log.info("reload (%s): loading model %s from %s", trigger, source.name, source.directory)
            try:
                loaded[source.name] = await self._load(source)
            except Exception as exc:  # ArtifactError names the file; anything else is as bad
                for served in loaded.values():  # never half-loaded: all of the new ones, or none
                    await served.batcher.stop()
                reason = str(exc) if isinstance(exc, ArtifactError) else f"{type(exc).__name__}: {exc}"
                raise ReloadFailed(source.name, reason, serving) from exc
        models = {name: loaded.get(name) or current[name] for name in wanted}
        retired = [served for name, served in current.items() if models.get(name) is not served]
        self._install(models, config)  # the swap: one assignment each, no await in between
        changes = []
        for name in wanted:
            before = current.get(name)
            if name in loaded:
                changes.append(
                    ModelChange(
                        name,
                        "swapped" if before else "added",
                        models[name].fingerprint,
                        before and before.fingerprint,
                    )
                )
            else:
                changes.append(
                    ModelChange(name, "unchanged", models[name].fingerprint, models[name].fingerprint)
                )
        changes += [
            ModelChange(name, "removed", None, served.fingerprint)
            for name, served in current.items()
            if name not in wanted
        ]
        for served in retired:
            self._metrics.model_info.remove(*served.info_labels.values())
            if served.name not in models:
                self._metrics.forget_model(served.name)
        for served in loaded.values():
            self._announce(served)
        for served in retired:
            await served.retire()
            log.info("model %s (fingerprint %s) unloaded", served.name, served.fingerprint[:16])
        return ReloadReport(trigger, config.default, changes, 0.0)

    async def stop(self) -> None:
        async with self._lock:
            for served in self._models.values():
                await served.batcher.stop()
