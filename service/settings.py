"""Service settings: every knob is a `MARC_*` environment variable (or a `marc serve` flag).

Nothing reads the environment at import time: `Settings()` is built by the CLI (or a test) and passed
explicitly to `create_app(settings)`.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.cache.values import CacheDtype

VariantChoice = Literal["auto", "fp32", "int8", "fp16"]
ProviderChoice = Literal["auto", "cpu", "cuda"]
Device = Literal["cpu", "cuda"]
Auto = Literal["auto"]
AtLeastOne = Annotated[int, Field(ge=1)]
LogLevel = Literal["debug", "info", "warning", "error", "critical"]
# The JSON around one item (keys, quotes, an id of up to 512 characters) and around the whole request.
ITEM_JSON_BYTES = 600
REQUEST_JSON_BYTES = 1024
MIN_BODY_BYTES = 1024


def available_cpus(cgroup_cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """CPUs this process may use: its CPU affinity, capped by a cgroup v2 CPU quota (a container's CPU
    limit, which affinity does not show)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = cgroup_cpu_max.read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass  # no cgroup v2 quota here
    return cpus


@dataclass(frozen=True)
class ProviderDefaults:
    """What the ``auto`` batching and process settings mean on one execution provider."""

    max_batch_size: int
    max_batch_tokens: int
    model_runners: int
    max_workers: int  # workers: the CPUs this process may use, halved, capped at this (CPU: 1)
    io_binding: bool


# CPU: the values measured best on the 2-core development machines (BENCHMARKS.md: the cold-path levers,
# IO binding side by side). CUDA: by construction, to be checked by `make gpu-check`: big runs (a GPU's
# items/s keep growing with the run's size long after a CPU's stop), one run at a time per session (runs
# of one session share its CUDA stream), several server processes per GPU (the work around the model is
# CPU-bound: docs/gpu.md).
PROVIDER_DEFAULTS: dict[Device, ProviderDefaults] = {
    "cpu": ProviderDefaults(
        max_batch_size=16, max_batch_tokens=1024, model_runners=2, max_workers=1, io_binding=False
    ),
    "cuda": ProviderDefaults(
        max_batch_size=256, max_batch_tokens=16384, model_runners=1, max_workers=8, io_binding=True
    ),
}


def _per_provider(name: str) -> str:
    cpu, cuda = (getattr(PROVIDER_DEFAULTS[d], name) for d in ("cpu", "cuda"))
    return f"auto = {cpu} on CPU, {cuda} on CUDA"


# The settings whose "auto" depends on the execution provider.
PLAN_SETTINGS = ("max_batch_size", "max_batch_tokens", "model_runners", "workers", "io_binding")


@dataclass(frozen=True)
class ServingPlan:
    """The batching and process settings one model is served with, resolved for the execution provider
    its session came up on (`Settings.serving_plan`): logged at load and shown in /v1/models."""

    device: Device
    max_batch_size: int
    max_batch_tokens: int
    model_runners: int
    workers: int
    io_binding: bool
    auto: tuple[str, ...]  # the settings left at "auto", resolved here for ``device``

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "auto": list(self.auto)}

    def describe(self) -> str:
        values = ", ".join(f"{name} {getattr(self, name)}" for name in PLAN_SETTINGS)
        resolved = f" ({', '.join(self.auto)} auto for {self.device})" if self.auto else ""
        return values + resolved


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MARC_", extra="ignore", frozen=True)

    # --- model -------------------------------------------------------------------------------
    artifact: Path | None = Field(
        None,
        description="Artifact directory written by `marc export`: the one model served, under its "
        "manifest name (or use MARC_ARTIFACTS).",
    )
    artifacts: str = Field(
        "",
        description="Several models: `name=<dir>,name=<dir>` (served under these names), or a directory "
        "whose artifact sub-directories are served under their folder names. Re-read on SIGHUP and "
        "POST /admin/reload.",
    )
    default_model: str = Field(
        "",
        description="The model of requests that name none; empty = the first of MARC_ARTIFACTS (in "
        "name order for a directory; a reload keeps the default while it is served).",
    )
    variant: VariantChoice = Field(
        "auto",
        description="Model file to serve. auto = on CUDA fp16 (fp32 when the artifact has no fp16); on "
        "CPU int8 or fp32, whichever a short measurement at load finds faster on this machine (int8 "
        "only with per-row activation scales, and only from MARC_INT8_MIN_SPEEDUP); the choice and its "
        "figures are logged and shown in /v1/models.",
    )
    int8_min_speedup: float = Field(
        1.10,
        ge=0,
        description="MARC_VARIANT=auto on CPU serves int8 only when it is measured at least this many "
        "times as fast as fp32 at load (int8 costs a catalogue cosine of ~0.997 to fp32). 0 = int8 "
        "wherever the artifact has it, without measuring (the same variant on every machine and run).",
    )
    provider: ProviderChoice = Field(
        "auto",
        description="ONNX Runtime execution provider. auto = CUDA when it really loads, else CPU; cuda = "
        "refuse to start without CUDA.",
    )
    cuda_device_id: int = Field(0, ge=0, description="GPU index for the CUDA provider.")
    ort_intra_threads: int = Field(
        0,
        ge=0,
        description="ONNX Runtime intra-op threads per run. 0 = the CPUs this process may use (its "
        "affinity, capped by a cgroup v2 CPU quota) shared out among MARC_MODEL_RUNNERS x MARC_WORKERS "
        "runs (with one of each: ORT's default, one per physical core); `marc precompute` (one caller) "
        "uses ORT's default. In Kubernetes, set it so runners x threads = the pod's CPU limit (the base "
        "manifest: 2 x 1).",
    )
    ort_inter_threads: int = Field(0, ge=0, description="ONNX Runtime inter-op threads (0 = ORT default).")

    # --- cache -------------------------------------------------------------------------------
    redis_url: str = Field(
        "",
        description="redis://, rediss:// (TLS) or redis+cluster:// URL. Empty = in-process LRU cache.",
    )
    redis_cluster: bool = Field(False, description="Treat MARC_REDIS_URL as a Redis Cluster entry point.")
    cache_ttl_seconds: int = Field(
        7 * 24 * 3600, ge=0, description="Expiry of cached vectors (7 days); 0 = never."
    )
    cache_prefix: str = Field("marc", min_length=1, description="First segment of every cache key.")
    cache_timeout_ms: float = Field(
        100.0,
        gt=0,
        description="Per Redis call; a slower call counts as an error, its request is served by the model.",
    )
    cache_breaker_timeouts: int = Field(
        3,
        ge=1,
        description="Consecutive Redis timeouts (calls in flight together count once) after which Redis "
        "is skipped like a refused connection; any success resets the count.",
    )
    cache_retry_seconds: float = Field(
        1.0,
        gt=0,
        description="After a Redis connection failure (or MARC_CACHE_BREAKER_TIMEOUTS timeouts), skip Redis "
        "for this long; then one request probes it (the others keep skipping until it answers).",
    )
    redis_max_connections: int = Field(
        64,
        ge=1,
        description="Redis connections per process. A burst beyond it waits for a free connection "
        "(within MARC_CACHE_TIMEOUT_MS), it is never counted as a Redis failure.",
    )
    cache_dtype: CacheDtype = Field(
        "float32",
        description="Cached value type: float32 (4·k bytes, exact) or float16 (2·k bytes; components "
        "rounded to float16, relative error <= 2^-11, widened to float32 when served; misses are served "
        "rounded too, so an answer does not depend on whether it was cached), each plus a 4-byte token "
        "trailer. Separate key spaces. `marc precompute --cache-dtype` must match.",
    )
    lru_max_items: int = Field(100_000, ge=1, description="Capacity of the in-process LRU cache.")
    near_cache_bytes: int = Field(
        64 * 1024 * 1024,
        ge=0,
        description="In-process near-cache in front of Redis for text keys (immutable per model "
        "fingerprint, so never invalidated), in bytes of this process's memory (~530 B per float32 k=64 "
        "item, keys and overhead included: 64 MiB holds ~125k items); the least recently used go first; a "
        "hit costs no Redis round trip. 0 = none. Not used with the in-process LRU (no Redis URL).",
    )
    confirmed_ids_seconds: float = Field(
        30.0,
        ge=0,
        description="How long this process trusts that an item id's key still points at the text it last "
        "read or wrote there: a request whose ids are all confirmed and whose texts are in the near-cache "
        "costs no Redis round trip. Another process re-pointing the id, or `marc cache purge`, is seen "
        "here only after this long; a lost connection to Redis (a restart) drops every confirmation. "
        "Kept below MARC_CACHE_TTL_SECONDS. 0 = read every id's key from Redis.",
    )
    confirmed_ids_bytes: int = Field(
        4 * 1024 * 1024,
        ge=0,
        description="Bound of the confirmed ids (MARC_CONFIRMED_IDS_SECONDS) in bytes of this process's "
        "memory (~330 B per id); the least recently used go first. 0 = none.",
    )
    cache_write_queue_items: int = Field(
        65_536,
        ge=1,
        description="Cache writes waiting to be sent: requests do not wait for their writes, which go to "
        "Redis as one pipelined call per flush. Past this the oldest are dropped and counted in "
        "marc_cache_writes_dropped_total (Redis slower than the writes coming in).",
    )
    response_memo_bytes: int = Field(
        8 * 1024 * 1024,
        ge=0,
        description="Answers to all-hits requests kept whole by their exact request body (bodies up to "
        "2 KiB; with item ids only while every id is confirmed, MARC_CONFIRMED_IDS_SECONDS), so a repeat "
        "is answered with the same bytes; bytes per process, least recently used go first; stale after "
        "any model reload. 0 = none.",
    )

    # --- batching -----------------------------------------------------------------------------
    max_batch_size: AtLeastOne | Auto = Field(
        "auto",
        description="Items per ONNX Runtime run (and per window when several runners share work); "
        + _per_provider("max_batch_size")
        + ".",
    )
    max_batch_tokens: AtLeastOne | Auto = Field(
        "auto",
        description="Tokens per ONNX Runtime run, counted as the model computes them: rows x the run's "
        "longest row (padding included); a run ends before it would pass this (a single longer row "
        "runs alone). Bounds a run's time and memory when texts are long; "
        + _per_provider("max_batch_tokens")
        + " (max_batch_size rows of 64 tokens, the default artifact's max_length).",
    )
    max_wait_ms: float = Field(2.0, ge=0, description="How long a batch waits to fill before it runs.")
    pipeline_windows: int = Field(
        3,
        ge=1,
        le=8,
        description="Windows in the micro-batcher at once (collected, tokenised, waiting or running; at "
        "least MARC_MODEL_RUNNERS): one more than the runners, so the next window is ready when a run ends.",
    )
    model_runners: Annotated[int, Field(ge=1, le=8)] | Auto = Field(
        "auto",
        description="ONNX Runtime runs at once per model and process, each on its share of the CPUs "
        "(MARC_ORT_INTRA_THREADS); "
        + _per_provider("model_runners")
        + ". CPU: two runs side by side beat one run over both cores (BENCHMARKS.md, cold-path levers); "
        "CUDA: runs of one session share its CUDA stream, so a second runner only adds waiting.",
    )
    io_binding: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Run the model with ONNX Runtime's IO binding: inputs bound from host memory, the "
        "output written straight into the answer's buffer (no per-run output allocation and copy); "
        + _per_provider("io_binding").replace("True", "on").replace("False", "off")
        + " (on CPU it measured no faster than a plain run: docs/gpu.md).",
    )
    max_queue_items: int = Field(
        2048,
        ge=1,
        description="Items waiting for the model; beyond this, 503 + Retry-After. Keep it at least the "
        "largest request (MARC_MAX_OPENAI_INPUTS), or such a request with all texts new is refused every "
        "time.",
    )

    # --- request limits ---------------------------------------------------------------------------
    max_items_per_request: int = Field(256, ge=1, description="Items (or ids) per /v1/embed or lookup.")
    max_openai_inputs: int = Field(2048, ge=1, description="Inputs per /v1/embeddings request (OpenAI's).")
    max_text_chars: int = Field(8192, ge=1, description="Characters per item text.")
    max_body_bytes: int = Field(
        0,
        ge=0,
        description="Request body size limit (413 above). 0 = what MARC_MAX_ITEMS_PER_REQUEST texts of "
        "MARC_MAX_TEXT_CHARS one-byte characters need, with their JSON (2,251,776 bytes = 2.1 MiB by "
        "default).",
    )
    body_read_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="A request body must arrive within this (408 otherwise, and the connection is "
        "closed: slow uploads).",
    )
    max_concurrent_requests: int = Field(
        1024,
        ge=1,
        description="Requests in the service at once (bodies being read included; /healthz, /readyz "
        "and /metrics not counted); beyond this, 503 at once. With the body limit it bounds memory.",
    )
    reject_truncated: bool = Field(
        False,
        description="Answer 422 (400 on /v1/embeddings) naming the item when a text is longer than the "
        "model's max_length tokens, instead of embedding it truncated (and saying so).",
    )
    openai_token_encoding: str = Field(
        "cl100k_base",
        description="tiktoken encoding that token-id arrays sent to /v1/embeddings are decoded with "
        "(LangChain's default); empty = token arrays are refused with a 400.",
    )

    # --- HTTP ----------------------------------------------------------------------------------
    api_key: str = Field(
        "",
        description="Bearer token required on /v1/* and /admin/reload when set; empty = no auth on "
        "/v1/*, and the admin route is off (403).",
    )
    protect_metrics_and_docs: bool = Field(
        False, description="Also require the API key on /metrics and the docs (/docs, /redoc, /openapi.json)."
    )
    host: str = Field(
        "127.0.0.1",
        description="Bind address: local only by default; 0.0.0.0 listens on all interfaces (containers).",
    )
    port: int = Field(8000, ge=0, le=65535, description="Bind port.")
    workers: Annotated[int, Field(ge=1, le=64)] | Auto = Field(
        "auto",
        description="Server processes on the one port, each with its own model (one ONNX Runtime "
        "session), batcher and near-cache (Redis shared); /metrics of any of them covers all "
        "(prometheus-client multiprocess mode). auto = 1 on CPU; on CUDA half the CPUs this process "
        f"may use, at most {PROVIDER_DEFAULTS['cuda'].max_workers}, all sharing the one GPU (the work "
        "around the model is CPU-bound).",
    )
    drain_seconds: float = Field(
        0.0, ge=0, description="On SIGTERM, report not-ready this long while still serving, then stop."
    )
    keep_alive_seconds: float = Field(
        75.0,
        gt=0,
        le=3600,
        description="How long an idle HTTP keep-alive connection stays open (uvicorn's timeout_keep_alive). "
        "Keep it above the idle timeout of any load balancer or client pool in front (60 s is common): "
        "whichever side closes an idle connection first races a request the other side sends on it, and "
        "the client sees a reset connection (a 502 behind a balancer). 75 s by default.",
    )
    log_level: LogLevel = Field(
        "info", description="Log level of the service and uvicorn; debug adds uvicorn's access log."
    )

    @property
    def body_limit_bytes(self) -> int:
        """``max_body_bytes``, or what the item and character limits need."""
        return self.max_body_bytes or (
            self.max_items_per_request * (self.max_text_chars + ITEM_JSON_BYTES) + REQUEST_JSON_BYTES
        )

    @field_validator("log_level", mode="before")
    @classmethod
    def _lowercase_level(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    def serving_plan(self, device: Device) -> ServingPlan:
        """The batching and process settings on ``device``: each one as set, or (auto) the provider's
        default (`PROVIDER_DEFAULTS`)."""
        defaults = PROVIDER_DEFAULTS[device]
        auto = tuple(name for name in PLAN_SETTINGS if getattr(self, name) == "auto")

        def pick(name: str, default: int) -> int:
            value = getattr(self, name)
            return default if value == "auto" else value

        return ServingPlan(
            device=device,
            max_batch_size=pick("max_batch_size", defaults.max_batch_size),
            max_batch_tokens=pick("max_batch_tokens", defaults.max_batch_tokens),
            model_runners=pick("model_runners", defaults.model_runners),
            workers=pick("workers", max(1, min(defaults.max_workers, available_cpus() // 2))),
            io_binding=defaults.io_binding if self.io_binding == "auto" else self.io_binding == "on",
            auto=auto,
        )

    @property
    def serving_intra_threads(self) -> int:
        """Intra-op threads per run in the service: MARC_ORT_INTRA_THREADS, or (0) the CPUs this
        process may use shared out among every run that can be in progress at once (runners x
        workers, as on CPU: the threads are set before the provider is known, and on CUDA they only
        run the few nodes left on the CPU), so they never oversubscribe the cores; 0 with one of
        each = ORT's default."""
        plan = self.serving_plan("cpu")
        runs = plan.model_runners * plan.workers
        if self.ort_intra_threads or runs == 1:
            return self.ort_intra_threads
        return max(1, available_cpus() // runs)

    @model_validator(mode="after")
    def _check_combinations(self) -> Settings:
        if self.artifact is not None and self.artifacts:
            raise ValueError("set MARC_ARTIFACT (one model) or MARC_ARTIFACTS (several), not both")
        if self.artifact is None and not self.artifacts:
            raise ValueError("MARC_ARTIFACT (one model) or MARC_ARTIFACTS (several) is required")
        if self.default_model and self.artifact is not None:
            raise ValueError("MARC_DEFAULT_MODEL goes with MARC_ARTIFACTS (MARC_ARTIFACT serves one model)")
        if self.redis_cluster and not self.redis_url:
            raise ValueError("MARC_REDIS_CLUSTER needs MARC_REDIS_URL")
        if 0 < self.max_body_bytes < MIN_BODY_BYTES:
            raise ValueError(f"MARC_MAX_BODY_BYTES must be 0 (derived) or at least {MIN_BODY_BYTES}")
        if self.cache_ttl_seconds and self.confirmed_ids_seconds >= self.cache_ttl_seconds:
            raise ValueError(
                "MARC_CONFIRMED_IDS_SECONDS must be below MARC_CACHE_TTL_SECONDS (an id key that expired "
                "in Redis must be read, and rewritten, before its confirmation could hide it)"
            )
        return self
