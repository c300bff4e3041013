"""The API docs behind the key (``MARC_PROTECT_METRICS_AND_DOCS``): FastAPI's own /docs, /redoc and
/openapi.json are switched off and served here with the key check instead. A browser does not send
the key when the docs page fetches /openapi.json: fetch it with the header (curl, an API client)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse

from service.api.dependencies import require_api_key_for_operations
from service.api.responses import OrjsonResponse


def protected_docs(app: FastAPI) -> APIRouter:
    router = APIRouter(dependencies=[Depends(require_api_key_for_operations)], include_in_schema=False)

    @router.get("/openapi.json")
    async def openapi() -> OrjsonResponse:
        return OrjsonResponse(app.openapi())

    @router.get("/docs")
    async def swagger() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{app.title} - docs")

    @router.get("/redoc")
    async def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url="/openapi.json", title=f"{app.title} - docs")

    return router
