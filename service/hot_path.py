"""The all-hits fast lane for ``POST /v1/embed`` (pure ASGI, in front of FastAPI's routing).

A recommender asks for the same catalogue items again and again, so most requests are answered
entirely from the cache. For those, FastAPI's per-request machinery (routing, dependency solving,
JSON parsing plus a separate validation pass) costs more than the answer itself. This lane validates
the body with the same pydantic model in one call (`model_validate_json`), checks the API key and
limits, does the request's one cache read and, when every vector is there, sends the pre-serialised
answer itself: no task, no disconnect watcher, no model.

Everything else goes on to the FastAPI route with the body replayed: invalid input (the route
produces the usual 4xx naming the field - the lane never answers an error), a wrong API key,
misses (the route reuses the lane's cache read from ``scope``, so there is still one round trip).
"""

from __future__ import annotations

from fastapi.security import HTTPAuthorizationCredentials
from pydantic import ValidationError
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from service.dependencies import require_api_key
from service.errors import ApiError
from service.middleware import read_body, replay_body
from service.pipeline import CacheRead
from service.responses import embed_body, timing_headers
from service.runtime import ServiceRuntime
from service.schemas import EmbedRequest

EMBED_PATH = "/v1/embed"
# The route picks the lane's cache read up from the request scope under this key.
PREFETCHED_READ = "marc.cache_read"
# Same timing headers as the route's (`timing_headers`): nothing waited for, nothing computed.
ALL_HITS_HEADERS = [
    (b"content-type", b"application/json"),
    *(
        (name.encode(), value.encode())
        for name, value in timing_headers(queue_seconds=0.0, inference_seconds=0.0, cache_hits=0).items()
        if name != "x-cache-hits"
    ),
]


def prefetched_read(scope: Scope) -> CacheRead | None:
    """The cache read the lane already did for this request, if any (taken once)."""
    return scope.pop(PREFETCHED_READ, None)


class CachedEmbedMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        runtime: ServiceRuntime | None = scope.get("state", {}).get("runtime")
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or scope["path"] != EMBED_PATH
            or runtime is None
        ):
            await self.app(scope, receive, send)
            return
        body = await read_body(receive)
        if body is None:
            return  # client gone before it finished sending
        request = await self._acceptable(runtime, scope, body)
        if request is not None:
            texts = [item.text for item in request.items]
            ids = [item.id for item in request.items]
            read = await runtime.pipeline.read(texts, ids)
            outcome = runtime.pipeline.cached_outcome(read)
            if outcome is not None:
                content = embed_body(
                    runtime.encoder.artifact, request.encoding, ids, outcome.vectors, outcome.cached
                )
                headers = [
                    *ALL_HITS_HEADERS,
                    (b"content-length", str(len(content)).encode()),
                    (b"x-cache-hits", str(len(texts)).encode()),
                ]
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                await send({"type": "http.response.body", "body": content})
                return
            scope[PREFETCHED_READ] = read
        await self.app(scope, replay_body(body, receive), send)

    @staticmethod
    async def _acceptable(runtime: ServiceRuntime, scope: Scope, body: bytes) -> EmbedRequest | None:
        """The parsed request if the lane may answer it: valid, authorised, within the limits."""
        settings = runtime.settings
        if settings.api_key:
            scheme, _, token = (Headers(scope=scope).get("authorization") or "").partition(" ")
            if scheme.lower() != "bearer":
                return None
            credentials = HTTPAuthorizationCredentials(scheme=scheme, credentials=token.strip())
            try:
                await require_api_key(runtime, credentials)  # the one place the key is compared
            except ApiError:
                return None
        try:
            request = EmbedRequest.model_validate_json(body)
        except ValidationError:
            return None
        if len(request.items) > settings.max_items_per_request or any(
            len(item.text) > settings.max_text_chars for item in request.items
        ):
            return None
        return request
