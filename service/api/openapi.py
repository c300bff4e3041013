"""The published OpenAPI schema: FastAPI's routes, the embed routes (served by `service.api.embed`,
outside FastAPI's routing, so described here from `EMBED_ROUTES`), and the running limits (items per
request, characters per text) as maxItems / maxLength, so clients and generated tests know them."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute

from service.api.dependencies import require_api_key
from service.api.embed import EMBED_ROUTES, EmbedRoute
from service.api.schemas import ErrorResponse
from service.settings import Settings

ERRORS: dict[int, str] = {
    400: "Invalid request (OpenAI's status for it); `param` names the field.",
    401: "Missing or invalid API key (when MARC_API_KEY is set).",
    404: "`model` names no served model (`code` model_not_found; the message lists the served names).",
    408: "The body did not arrive within MARC_BODY_READ_TIMEOUT_SECONDS.",
    413: "Body larger than the body limit (MARC_MAX_BODY_BYTES).",
    415: "Content-Type is not application/json.",
    422: "Invalid request; `param` names the field.",
    503: "Overloaded, shutting down or (lookups) cache unavailable; see Retry-After.",
}


def _documented(route: EmbedRoute) -> APIRoute:
    """An APIRoute that only describes ``route`` (it is never mounted: `EmbedApi` serves the path)."""

    def endpoint(body: Any) -> None:  # pragma: no cover - never called
        raise NotImplementedError

    endpoint.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter("body", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=route.request)]
    )
    endpoint.__name__ = route.handler.__name__
    statuses = sorted({401, 404, 408, 413, 415, route.invalid_status, 503})
    return APIRoute(
        route.path,
        endpoint,
        methods=["POST"],
        response_model=route.response,
        responses={status: {"model": ErrorResponse, "description": ERRORS[status]} for status in statuses},
        description=inspect.getdoc(route.handler) or "",
        tags=[route.tag],
        dependencies=[Depends(require_api_key)],  # documents the bearer scheme
    )


def _document_limits(schema: dict[str, Any], settings: Settings) -> None:
    models = schema["components"]["schemas"]
    items, chars = settings.max_items_per_request, settings.max_text_chars
    models["EmbedRequest"]["properties"]["items"]["maxItems"] = items
    models["EmbedItem"]["properties"]["text"]["maxLength"] = chars
    models["LookupRequest"]["properties"]["ids"]["maxItems"] = items
    one_text, texts, _, token_arrays = models["OpenAIEmbeddingsRequest"]["properties"]["input"]["anyOf"]
    one_text["maxLength"] = texts["items"]["maxLength"] = chars
    texts["maxItems"] = token_arrays["maxItems"] = settings.max_openai_inputs


def openapi_builder(app: FastAPI, settings: Settings) -> Callable[[], dict[str, Any]]:
    """The function to install as ``app.openapi`` (built once, on first use)."""
    documented = [_documented(route) for route in EMBED_ROUTES]

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=[*documented, *app.routes],
            )
            _document_limits(schema, settings)
            app.openapi_schema = schema
        return app.openapi_schema

    return openapi
