"""Service settings: every knob is a `MARC_*` environment variable (or a `marc serve` flag).

Nothing reads the environment at import time: `Settings()` is built by the CLI (or a test) and passed
explicitly to `create_app(settings)`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.cache_values import CacheDtype

VariantChoice = Literal["auto", "fp32", "int8", "fp16"]
ProviderChoice = Literal["auto", "cpu", "cuda"]
LogLevel = Literal["debug", "info", "warning", "error", "critical"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MARC_", extra="ignore", frozen=True)

    # --- model -------------------------------------------------------------------------------
    artifact: Path = Field(description="Artifact directory written by `marc export`.")
    variant: VariantChoice = Field(
        "auto",
        description="Model file to serve. auto = fp16 when CUDA is usable and the artifact has it, "
        "else fp32.",
    )
    provider: ProviderChoice = Field(
        "auto", description="ONNX Runtime execution provider. auto = CUDA when it really loads, else CPU."
    )
    cuda_device_id: int = Field(0, ge=0, description="GPU index for the CUDA provider.")
    ort_intra_threads: int = Field(0, ge=0, description="ONNX Runtime intra-op threads (0 = ORT default).")
    ort_inter_threads: int = Field(0, ge=0, description="ONNX Runtime inter-op threads (0 = ORT default).")

    # --- cache -------------------------------------------------------------------------------
    redis_url: str = Field(
        "",
        description="redis://, rediss:// (TLS) or redis+cluster:// URL. Empty = in-process LRU cache.",
    )
    redis_cluster: bool = Field(False, description="Treat redis_url as a Redis Cluster entry point.")
    cache_ttl_seconds: int = Field(7 * 24 * 3600, ge=0, description="Expiry of cached vectors; 0 = never.")
    cache_prefix: str = Field("marc", min_length=1, description="First segment of every cache key.")
    cache_timeout_ms: float = Field(
        100.0,
        gt=0,
        description="Per Redis call; a slower call counts as an error, its request is served by the model.",
    )
    cache_breaker_timeouts: int = Field(
        3,
        ge=1,
        description="Consecutive Redis timeouts (one per stall) after which Redis is skipped like a "
        "refused connection.",
    )
    cache_retry_seconds: float = Field(
        1.0,
        gt=0,
        description="After a Redis connection failure (or cache_breaker_timeouts timeouts), skip Redis "
        "for this long; then one request probes it (the others keep skipping until it answers).",
    )
    redis_max_connections: int = Field(
        64,
        ge=1,
        description="Redis connections per process. A burst beyond it waits for a free connection "
        "(within cache_timeout_ms), it is never counted as a Redis failure.",
    )
    cache_dtype: CacheDtype = Field(
        "float32",
        description="Cached value type: float32 (exact) or float16 (half the memory; components rounded "
        "to float16, relative error <= 2^-11, widened to float32 when served). Separate key spaces.",
    )
    lru_max_items: int = Field(100_000, ge=1, description="Capacity of the in-process LRU cache.")

    # --- batching and limits -----------------------------------------------------------------
    max_batch_size: int = Field(32, ge=1, description="Items per ONNX Runtime run.")
    max_wait_ms: float = Field(2.0, ge=0, description="How long a batch waits to fill before it runs.")
    max_queue_items: int = Field(1024, ge=1, description="Items waiting for the model; beyond this, 503.")
    max_items_per_request: int = Field(256, ge=1, description="Items (or inputs) per request.")
    max_text_chars: int = Field(8192, ge=1, description="Characters per item text.")
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="Request body size limit (413 above).")

    # --- HTTP ----------------------------------------------------------------------------------
    api_key: str = Field("", description="Bearer token required on /v1/* when set.")
    host: str = Field("127.0.0.1", description="Bind address (0.0.0.0 to listen on all interfaces).")
    port: int = Field(8000, ge=0, le=65535, description="Bind port.")
    drain_seconds: float = Field(
        0.0, ge=0, description="On SIGTERM, report not-ready this long while still serving, then stop."
    )
    log_level: LogLevel = Field("info", description="Log level of the service and uvicorn.")

    @field_validator("log_level", mode="before")
    @classmethod
    def _lowercase_level(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check_cluster_url(self) -> Settings:
        if self.redis_cluster and not self.redis_url:
            raise ValueError("MARC_REDIS_CLUSTER needs MARC_REDIS_URL")
        return self
