"""The published OpenAPI schema states the running limits (items per request, characters per text),
so clients and generated tests know them; the models alone cannot, the limits are settings."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from service.settings import Settings


def document_limits(app: FastAPI, settings: Settings) -> None:
    """Make ``app.openapi()`` carry ``settings``' request limits as maxItems / maxLength."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        schema = build()  # FastAPI builds it once and caches it; setting the limits is idempotent
        models = schema["components"]["schemas"]
        items, chars = settings.max_items_per_request, settings.max_text_chars
        models["EmbedRequest"]["properties"]["items"]["maxItems"] = items
        models["EmbedItem"]["properties"]["text"]["maxLength"] = chars
        models["LookupRequest"]["properties"]["ids"]["maxItems"] = items
        one_text, text_list = models["OpenAIEmbeddingsRequest"]["properties"]["input"]["anyOf"]
        one_text["maxLength"] = text_list["items"]["maxLength"] = chars
        text_list["maxItems"] = items
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
