"""GET /v1/models: the served models as an OpenAI-style model list, with their artifact manifests."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from service.api.dependencies import Runtime, require_api_key
from service.api.responses import OrjsonResponse
from service.api.routers import ERROR_RESPONSES
from service.api.schemas import ModelList

router = APIRouter(prefix="/v1", tags=["models"], dependencies=[Depends(require_api_key)])


@router.get("/models", response_model=ModelList, responses={401: ERROR_RESPONSES[401]})
async def list_models(runtime: Runtime) -> OrjsonResponse:
    """Each served model: its name (the `model` of requests), fingerprint, variant and why, provider,
    the batching settings resolved for it, dim, the `dimensions` a request may ask for, max_length,
    whether it is the default, and its manifest.json."""
    registry = runtime.models
    cards = []
    for served in registry.models():
        artifact = served.artifact
        manifest = artifact.manifest
        cards.append(
            {
                "id": served.name,
                "object": "model",
                "created": int(manifest.created_at.timestamp()),
                "owned_by": "marc-serve",
                "fingerprint": artifact.fingerprint,
                "variant": artifact.variant,
                "variant_choice": served.encoder.variant_choice.as_dict(),
                "provider": served.encoder.provider,
                "serving": served.plan.as_dict(),
                "dim": artifact.dim,
                "dimensions": artifact.dimensions,
                "max_length": artifact.max_length,
                "default": served.name == registry.default_name,
                "manifest": manifest.model_dump(mode="json"),
            }
        )
    return OrjsonResponse({"object": "list", "data": cards})
