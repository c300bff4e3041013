"""HTTP routes, one module per area. /v1/* routes carry the API-key dependency."""

from __future__ import annotations

from typing import Any

from service.schemas import ErrorResponse

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "Missing or invalid API key (when MARC_API_KEY is set)."},
    413: {"model": ErrorResponse, "description": "Body larger than MARC_MAX_BODY_BYTES."},
    415: {"model": ErrorResponse, "description": "Content-Type is not application/json."},
    422: {"model": ErrorResponse, "description": "Invalid request; `param` names the field."},
    503: {"model": ErrorResponse, "description": "Overloaded or shutting down; see Retry-After."},
}
