"""POST /v1/embed: items (optional id + text) -> vectors, each marked cached or not."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from service.dependencies import Runtime, require_api_key
from service.disconnect import cancel_on_disconnect
from service.limits import enforce_limits
from service.responses import OrjsonResponse, encode_vector, timing_headers
from service.routers import ERROR_RESPONSES
from service.schemas import EmbedRequest, EmbedResponse

router = APIRouter(prefix="/v1", tags=["embeddings"], dependencies=[Depends(require_api_key)])


@router.post("/embed", response_model=EmbedResponse, responses=ERROR_RESPONSES)
async def embed(body: EmbedRequest, request: Request, runtime: Runtime) -> OrjsonResponse:
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
    outcome = await cancel_on_disconnect(request, runtime.pipeline.embed(texts, ids))
    artifact = runtime.encoder.artifact
    content = {
        "model": artifact.name,
        "fingerprint": artifact.fingerprint,
        "dim": artifact.dim,
        "encoding": body.encoding,
        "data": [
            {"id": item_id, "embedding": encode_vector(vector, body.encoding), "cached": cached}
            for item_id, vector, cached in zip(ids, outcome.vectors, outcome.cached, strict=True)
        ],
    }
    headers = timing_headers(
        queue_seconds=outcome.queue_seconds,
        inference_seconds=outcome.inference_seconds,
        cache_hits=outcome.cache_hits,
    )
    return OrjsonResponse(content, headers=headers)
