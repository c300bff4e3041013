"""Liveness, readiness and Prometheus metrics. The probes are never behind the API key; /metrics is
with ``MARC_PROTECT_METRICS_AND_DOCS`` (Prometheus then sends the key as a bearer token)."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from service.api.dependencies import Runtime, require_api_key_for_operations
from service.api.responses import OrjsonResponse
from service.api.schemas import HealthResponse, ReadyResponse
from service.metrics import METRICS_CONTENT_TYPE

router = APIRouter(tags=["system"])


@router.get("/healthz", response_model=HealthResponse)
async def healthz() -> OrjsonResponse:
    """The process is alive and its event loop answers."""
    return OrjsonResponse({"status": "ok"})


@router.get("/readyz", response_model=ReadyResponse, responses={503: {"model": ReadyResponse}})
async def readyz(runtime: Runtime) -> OrjsonResponse:
    """Ready when the model is loaded and the service is not shutting down. A Redis outage does not
    make it unready (requests are served from the model); `cache.status` says "skipped" meanwhile."""
    default = runtime.models.default
    artifact = default.artifact
    content = {
        "status": "not ready" if runtime.draining else "ready",
        "reason": "shutting down" if runtime.draining else None,
        "model": default.name,
        "fingerprint": artifact.fingerprint,
        "variant": artifact.variant,
        "provider": default.encoder.provider,
        "queue_depth": sum(served.batcher.queued_items for served in runtime.models.models()),
        "models": runtime.models.names,
        "cache": {"backend": runtime.cache.backend, "status": runtime.cache.status()},
    }
    return OrjsonResponse(content, status_code=503 if runtime.draining else 200)


@router.get("/metrics", response_class=Response, dependencies=[Depends(require_api_key_for_operations)])
async def metrics(runtime: Runtime) -> Response:
    """Prometheus text exposition of this process's metrics."""
    return Response(runtime.metrics.render(), media_type=METRICS_CONTENT_TYPE)
