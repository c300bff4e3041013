"""`create_app(settings)`: the FastAPI application. Nothing is built at import time; the model,
cache and batcher come up in the lifespan and go down in reverse on shutdown.

Request path, outermost first: metrics (every response, refusals included) -> concurrency limit ->
the embed routes (`service.api.embed`, pure ASGI) -> FastAPI's own stack for everything else (models,
health, metrics, docs)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.embed import EMBED_ROUTES, EmbedApi
from service.api.errors import install_error_handlers
from service.api.middleware import ConcurrencyLimitMiddleware, RequestMetricsMiddleware
from service.api.openapi import openapi_builder
from service.api.responses import OrjsonResponse
from service.api.routers import admin, docs, models, system
from service.lifecycle import Lifecycle, ReloadOnSighup
from service.metrics import Metrics
from service.model.encoder import OnnxEncoder
from service.runtime import ServiceRuntime
from service.settings import Settings

DESCRIPTION = """Compressed item embeddings for recommender systems (MARC: an LLM cut at a middle layer
plus a compression module), with micro-batching, a Redis or in-process cache and Prometheus metrics.

Vectors in `base64` are little-endian float32 bytes, `float16` (alias `base64_fp16`) little-endian
float16, `int8` int8 values with a per-vector `scale`, `binary` sign bits packed most significant bit
first; `dimensions` asks for a nested prefix of the vector (the sizes are in `/v1/models`).
Responses carry `x-queue-time-ms`, `x-inference-time-ms`, `x-total-time-ms` and `x-cache-hits`."""
# Never refused by the concurrency limit: liveness, readiness and the scrape must answer under load.
PROBE_PATHS = ("/healthz", "/readyz", "/metrics")


class ServiceApp(FastAPI):
    """FastAPI whose HTTP requests enter through the service's own layers (``front``); FastAPI's own
    call - telemetry checks, error page, body limit, exception handlers, routing - runs only for what
    the embed routes leave to it: on a cache hit it costs more than the answer, and the embed routes
    answer their errors themselves."""

    front: ASGIApp | None = None

    async def fastapi_call(self, scope: Scope, receive: Receive, send: Send) -> None:
        await super().__call__(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.front is not None and scope["type"] == "http":
            await self.front(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


def create_app(
    settings: Settings,
    lifecycle: Lifecycle | None = None,
    encoders: dict[str, OnnxEncoder] | None = None,
) -> FastAPI:
    """The app for ``settings``. ``lifecycle`` lets a server flip readiness off before it stops
    (see `service.lifecycle.DrainingServer`); ``encoders``, when given, are the already loaded
    models by served name (`marc serve` loads them first so a bad artifact is refused before the
    server starts). In the main thread (`marc serve`) SIGHUP reloads the models."""
    metrics = Metrics()
    lifecycle = lifecycle or Lifecycle()

    # Handed over once: kept here, the first models could never be unloaded by a reload.
    preloaded = [encoders] if encoders else []

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[dict[str, ServiceRuntime]]:
        runtime = await ServiceRuntime.start(
            settings, metrics, lifecycle, preloaded.pop() if preloaded else None
        )
        sighup = ReloadOnSighup(runtime.models.reload)
        sighup.install()
        try:
            yield {"runtime": runtime}  # -> scope["state"]["runtime"] of every request
        finally:
            sighup.remove()
            await runtime.stop()

    protected = settings.protect_metrics_and_docs
    app = ServiceApp(
        title="marc-serve",
        description=DESCRIPTION,
        version="0.1.0",
        lifespan=lifespan,
        default_response_class=OrjsonResponse,
        # With the key on the docs, FastAPI's own docs routes are off and `protected_docs` serves them.
        **({"openapi_url": None, "docs_url": None, "redoc_url": None} if protected else {}),
    )
    install_error_handlers(app)
    routers = [models.router, system.router, admin.router]
    if protected:
        routers.append(docs.protected_docs(app))
    for router in routers:
        app.include_router(router)
    app.openapi = openapi_builder(app, settings)  # type: ignore[method-assign]
    # From the routers themselves: FastAPI (>= 0.16x) lists an included router as one entry in app.routes.
    known_paths = [route.path for router in routers for route in router.routes if isinstance(route, APIRoute)]
    known_paths += [route.path for route in EMBED_ROUTES]

    limited = ConcurrencyLimitMiddleware(
        EmbedApi(app.fastapi_call), limit=settings.max_concurrent_requests, exempt_paths=PROBE_PATHS
    )
    app.front = RequestMetricsMiddleware(limited, metrics=metrics, known_paths=known_paths)
    return app
