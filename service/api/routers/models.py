"""GET /v1/models: the served model as an OpenAI-style model list, with the artifact manifest."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from service.api.dependencies import Runtime, require_api_key
from service.api.responses import OrjsonResponse
from service.api.routers import ERROR_RESPONSES
from service.api.schemas import ModelList

router = APIRouter(prefix="/v1", tags=["models"], dependencies=[Depends(require_api_key)])


@router.get("/models", response_model=ModelList, responses={401: ERROR_RESPONSES[401]})
async def list_models(runtime: Runtime) -> OrjsonResponse:
    """The one served model: name, fingerprint, variant, provider, dim, the
    `dimensions` a request may ask for and its manifest.json."""
    artifact = runtime.encoder.artifact
    manifest = artifact.manifest
    card = {
        "id": artifact.name,
        "object": "model",
        "created": int(manifest.created_at.timestamp()),
        "owned_by": "marc-serve",
        "fingerprint": artifact.fingerprint,
        "variant": artifact.variant,
        "provider": runtime.encoder.provider,
        "dim": artifact.dim,
        "dimensions": artifact.dimensions,
        "manifest": manifest.model_dump(mode="json"),
    }
    return OrjsonResponse({"object": "list", "data": [card]})
