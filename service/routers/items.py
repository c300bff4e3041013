"""POST /v1/items/lookup: vectors stored under item ids (by `marc precompute` or `/v1/embed` items
with an id). No inference on this path."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from service.dependencies import Runtime, require_api_key
from service.errors import ApiError
from service.responses import OrjsonResponse, encode_vector
from service.routers import ERROR_RESPONSES
from service.schemas import LookupRequest, LookupResponse

router = APIRouter(prefix="/v1", tags=["items"], dependencies=[Depends(require_api_key)])


@router.post("/items/lookup", response_model=LookupResponse, responses=ERROR_RESPONSES)
async def lookup_items(body: LookupRequest, runtime: Runtime) -> OrjsonResponse:
    """Stored vectors for `ids`; ids without a vector for this model are listed in `unknown`.
    Answers 503 when the cache is unavailable (there is nothing else to look in)."""
    limit = runtime.settings.max_items_per_request
    if len(body.ids) > limit:
        raise ApiError(422, f"ids: at most {limit} ids per request (got {len(body.ids)})", param="ids")
    found = await runtime.pipeline.lookup(body.ids)
    artifact = runtime.encoder.artifact
    content = {
        "model": artifact.name,
        "fingerprint": artifact.fingerprint,
        "dim": artifact.dim,
        "encoding": body.encoding,
        "data": [
            {"id": item_id, "embedding": encode_vector(found[item_id], body.encoding)}
            for item_id in dict.fromkeys(body.ids)
            if item_id in found
        ],
        "unknown": [item_id for item_id in dict.fromkeys(body.ids) if item_id not in found],
    }
    return OrjsonResponse(content)
