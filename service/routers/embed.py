"""POST /v1/embed: items (optional id + text) -> vectors, each marked cached or not.

Requests answered entirely from the cache never get here: `service.hot_path` sends those. This route
answers the rest (and every invalid request, with FastAPI's validation)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from service.dependencies import Runtime, require_api_key
from service.disconnect import cancel_on_disconnect
from service.hot_path import prefetched_read
from service.limits import enforce_limits
from service.responses import embed_body, timing_headers
from service.routers import ERROR_RESPONSES
from service.schemas import EmbedRequest, EmbedResponse

router = APIRouter(prefix="/v1", tags=["embeddings"], dependencies=[Depends(require_api_key)])


@router.post("/embed", response_model=EmbedResponse, responses=ERROR_RESPONSES)
async def embed(body: EmbedRequest, request: Request, runtime: Runtime) -> Response:
    """Embed item texts. Cached vectors are served from the cache; the rest are computed in
    micro-batches. Items with an `id` are also stored under it for `/v1/items/lookup`."""
    settings = runtime.settings
    texts = [item.text for item in body.items]
    enforce_limits(
        texts,
        count_loc=("items",),
        text_loc=lambda i: ("items", i, "text"),
        max_items=settings.max_items_per_request,
        max_text_chars=settings.max_text_chars,
    )
    ids = [item.id for item in body.items]
    pipeline = runtime.pipeline
    read = prefetched_read(request.scope) or await pipeline.read(texts, ids)
    outcome = pipeline.cached_outcome(read)
    if outcome is None:
        # Only work that waits for the model needs watching for a client that hangs up.
        work = pipeline.complete(read)
        outcome = await (cancel_on_disconnect(request, work) if read.missing else work)
    content = embed_body(runtime.encoder.artifact, body.encoding, ids, outcome.vectors, outcome.cached)
    headers = timing_headers(
        queue_seconds=outcome.queue_seconds,
        inference_seconds=outcome.inference_seconds,
        cache_hits=outcome.cache_hits,
    )
    return Response(content, media_type="application/json", headers=headers)
