"""`create_app(settings)`: the FastAPI application. Nothing is built at import time; the model,
cache and batcher come up in the lifespan and go down in reverse on shutdown."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.routing import APIRoute

from service.encoder import OnnxEncoder
from service.errors import install_error_handlers
from service.hot_path import CachedEmbedMiddleware
from service.lifecycle import Lifecycle
from service.metrics import Metrics
from service.middleware import RequestGuardMiddleware, RequestMetricsMiddleware
from service.openapi import document_limits
from service.responses import OrjsonResponse
from service.routers import embed, items, models, openai_compat, system
from service.runtime import ServiceRuntime
from service.settings import Settings

DESCRIPTION = """Compressed item embeddings for recommender systems (MARC: an LLM cut at a middle layer
plus a compression module), with micro-batching, a Redis or in-process cache and Prometheus metrics.

Vectors in `base64` are little-endian float32 bytes; `base64_fp16` little-endian float16.
Responses carry `x-queue-time-ms`, `x-inference-time-ms`, `x-total-time-ms` and `x-cache-hits`."""


def create_app(
    settings: Settings, lifecycle: Lifecycle | None = None, encoder: OnnxEncoder | None = None
) -> FastAPI:
    """The app for ``settings``. ``lifecycle`` lets a server flip readiness off before it stops
    (see `service.lifecycle.DrainingServer`); ``encoder``, when given, is the already loaded model
    (`marc serve` loads it first so a bad artifact is refused before the server starts)."""
    metrics = Metrics()
    lifecycle = lifecycle or Lifecycle()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[dict[str, ServiceRuntime]]:
        runtime = await ServiceRuntime.start(settings, metrics, lifecycle, encoder)
        try:
            yield {"runtime": runtime}  # -> request.state.runtime (see service.dependencies)
        finally:
            await runtime.stop()

    app = FastAPI(
        title="marc-serve",
        description=DESCRIPTION,
        version="0.1.0",
        lifespan=lifespan,
        default_response_class=OrjsonResponse,
    )
    install_error_handlers(app)
    document_limits(app, settings)
    routers = [module.router for module in (embed, openai_compat, items, models, system)]
    for router in routers:
        app.include_router(router)
    known_paths = [route.path for router in routers for route in router.routes if isinstance(route, APIRoute)]
    # Added last = outermost: metrics see every response, including the guard's refusals; the
    # all-hits lane only sees bodies the guard let through.
    app.add_middleware(CachedEmbedMiddleware)
    app.add_middleware(RequestGuardMiddleware, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics, known_paths=known_paths)
    return app
