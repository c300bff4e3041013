"""POST /admin/reload: re-read the model configuration and swap what changed, as SIGHUP does
(`service.registry`). Behind the API key; with no MARC_API_KEY set the route is off (403), since an
unauthenticated caller must not make the service load files."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.security import HTTPAuthorizationCredentials

from service.api.auth import check_api_key
from service.api.dependencies import Runtime, bearer_scheme
from service.api.errors import ApiError
from service.api.responses import OrjsonResponse
from service.api.routers import ERROR_RESPONSES
from service.api.schemas import ErrorResponse, ReloadResponse
from service.registry import ReloadFailed

router = APIRouter(prefix="/admin", tags=["admin"])


async def require_admin_key(
    runtime: Runtime,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> None:
    if not runtime.settings.api_key:
        raise ApiError(
            403,
            "the admin routes need MARC_API_KEY to be set (reload with SIGHUP otherwise)",
            type="permission_error",
            code="admin_disabled",
        )
    check_api_key(runtime.settings.api_key, credentials.credentials if credentials else "")


@router.post(
    "/reload",
    response_model=ReloadResponse,
    dependencies=[Depends(require_admin_key)],
    responses={
        401: ERROR_RESPONSES[401],
        403: {"model": ErrorResponse, "description": "MARC_API_KEY is not set: the admin routes are off."},
        422: {
            "model": ErrorResponse,
            "description": "A new artifact was refused (`param` names the model, the message says why); "
            "the models served before keep serving.",
        },
    },
)
async def reload_models(runtime: Runtime) -> OrjsonResponse:
    """Re-read MARC_ARTIFACT(S): load every added or changed artifact beside the served ones, verify
    it (sha256 of its files, fingerprints, graph, smoke check), swap it in atomically, let requests
    in flight on the old one finish, then unload the old one. Waits for a reload already running."""
    try:
        # Shielded: a client that hangs up must not stop a reload half way (it would leak new models).
        report = await asyncio.shield(runtime.models.reload("admin"))
    except ReloadFailed as exc:
        raise ApiError(422, str(exc), type="reload_failed", code="reload_failed", param=exc.model) from None
    content = {
        "status": "reloaded" if report.changed else "unchanged",
        "default": report.default,
        "models": [
            {
                "name": change.name,
                "change": change.change,
                "fingerprint": change.fingerprint,
                "previous_fingerprint": change.previous_fingerprint,
            }
            for change in report.changes
        ],
        "seconds": round(report.seconds, 3),
    }
    return OrjsonResponse(content)
