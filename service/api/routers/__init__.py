"""The routes FastAPI serves: models, health, metrics, docs (the embed routes: `service.api.embed`)."""

from __future__ import annotations

from typing import Any

from service.api.schemas import ErrorResponse

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "Missing or invalid API key (when MARC_API_KEY is set)."},
}
