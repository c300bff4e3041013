"""POST /v1/embeddings: the OpenAI embeddings API, so the `openai` SDK works unchanged (it asks
for base64 by default and decodes little-endian float32)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Request

from service.dependencies import Runtime, require_api_key
from service.disconnect import cancel_on_disconnect
from service.errors import ApiError
from service.keys import normalise_text
from service.limits import enforce_limits
from service.responses import OrjsonResponse, encode_vector, timing_headers
from service.routers import ERROR_RESPONSES
from service.schemas import OpenAIEmbeddingsRequest, OpenAIEmbeddingsResponse

router = APIRouter(prefix="/v1", tags=["openai"], dependencies=[Depends(require_api_key)])


@router.post("/embeddings", response_model=OpenAIEmbeddingsResponse, responses=ERROR_RESPONSES)
async def create_embeddings(
    body: OpenAIEmbeddingsRequest, request: Request, runtime: Runtime
) -> OrjsonResponse:
    """OpenAI-compatible embeddings. `model` is accepted whatever it names; `dimensions`, if given,
    must equal the served dim."""
    settings, artifact = runtime.settings, runtime.encoder.artifact
    texts = body.input
    enforce_limits(
        texts,
        count_loc=("input",),
        text_loc=lambda i: ("input", i),
        max_items=settings.max_items_per_request,
        max_text_chars=settings.max_text_chars,
    )
    if body.dimensions is not None and body.dimensions != artifact.dim:
        raise ApiError(
            422,
            f"dimensions: this model serves {artifact.dim}-dimensional vectors (got {body.dimensions})",
            param="dimensions",
        )
    outcome = await cancel_on_disconnect(request, runtime.pipeline.embed(texts))
    tokens = await asyncio.to_thread(runtime.encoder.count_tokens, [normalise_text(t) for t in texts])
    content = {
        "object": "list",
        "data": [
            {"object": "embedding", "index": index, "embedding": encode_vector(vector, body.encoding_format)}
            for index, vector in enumerate(outcome.vectors)
        ],
        "model": artifact.name,
        "usage": {"prompt_tokens": sum(tokens), "total_tokens": sum(tokens)},
    }
    headers = timing_headers(
        queue_seconds=outcome.queue_seconds,
        inference_seconds=outcome.inference_seconds,
        cache_hits=outcome.cache_hits,
    )
    return OrjsonResponse(content, headers=headers)
