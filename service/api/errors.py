"""Every error leaves as JSON ``{"error": {"message", "type", "param", "code"}}`` - OpenAI's shape, so
OpenAI clients show the message - with the field named in ``param`` and in the message, ``type`` the
error class and ``code`` a string saying exactly what went wrong (e.g. ``too_many_items``).

Messages never carry internals (Redis addresses, exception texts of libraries): those go to the log.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from service.api.disconnect import ClientDisconnected
from service.api.responses import OrjsonResponse
from service.cache.stores import CacheUnavailable
from service.model.batcher import InferenceFailed, Overloaded, ShuttingDown
from service.model.sources import UnknownModel

log = logging.getLogger(__name__)

# nginx's "client closed request": nobody reads the answer, but the metrics keep it apart from 5xx.
CLIENT_CLOSED = 499


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str = "invalid_value",
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param
        self.headers = dict(headers or {})


def error_response(
    status: int,
    message: str,
    *,
    type: str,
    code: str,
    param: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> OrjsonResponse:
    body = {"error": {"message": message, "type": type, "param": param, "code": code}}
    return OrjsonResponse(body, status_code=status, headers=dict(headers or {}))


def api_error_response(exc: ApiError) -> OrjsonResponse:
    return error_response(
        exc.status, exc.message, type=exc.type, code=exc.code, param=exc.param, headers=exc.headers
    )


def as_api_error(exc: Exception) -> ApiError:
    """The answer to any exception of a request, with nothing internal in its message."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, Overloaded | ShuttingDown):
        kind = "overloaded" if isinstance(exc, Overloaded) else "shutting_down"
        headers = {"Retry-After": str(exc.retry_after_seconds)}
        return ApiError(503, str(exc), type=kind, code=kind, headers=headers)  # our own message
    if isinstance(exc, UnknownModel):  # OpenAI's status and code for a model it does not have
        return ApiError(404, str(exc), code="model_not_found", param="model")
    if isinstance(exc, CacheUnavailable):
        log.warning("cache unavailable for a lookup: %s", exc)
        message = "the cache is unavailable; retry later"
        return ApiError(
            503, message, type="cache_unavailable", code="cache_unavailable", headers={"Retry-After": "1"}
        )
    if isinstance(exc, InferenceFailed):  # the batcher logged the traceback
        return ApiError(
            500, "inference failed (logged); retry later", type="server_error", code="inference_failed"
        )
    if isinstance(exc, ClientDisconnected):
        return ApiError(
            CLIENT_CLOSED,
            "client closed the connection",
            type="client_closed_request",
            code="client_closed_request",
        )
    log.error("unhandled error", exc_info=exc)
    return ApiError(500, "internal error (logged)", type="server_error", code="server_error")


def _field_path(loc: Sequence[Any]) -> str:
    parts = [str(part) for part in loc]
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    return ".".join(parts) or "body"


def _unparsable(detail: str) -> str:
    """A readable reason for the JSON parser's error (which says where: line and column)."""
    if "recursion limit" in detail:
        return "nested too deeply"
    if "surrogate" in detail or "hex escape" in detail:
        return f"a \\u escape that is no character (lone surrogate), {detail}"
    if "unicode code point" in detail:
        return f"not valid UTF-8, {detail}"
    return detail


def validation_error(errors: Sequence[Mapping[str, Any]], status: int) -> ApiError:
    """One ApiError ("items.0.text: must not be empty; ...", param "items.0.text") for pydantic errors."""
    described: list[str] = []
    for error in errors[:10]:
        path = _field_path(error.get("loc", ()))
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        if error.get("type") == "json_invalid":
            detail = str((error.get("ctx") or {}).get("error", message))
            path, message = "body", f"malformed JSON ({_unparsable(detail)})"
        described.append(f"{path}: {message}")
    if len(errors) > 10:
        described.append(f"... and {len(errors) - 10} more")
    first = errors[0] if errors else {}
    invalid_json = first.get("type") == "json_invalid"
    param = "body" if invalid_json else _field_path(first.get("loc", ()))
    code = "invalid_json" if invalid_json else "invalid_value"
    return ApiError(status, "; ".join(described), param=param, code=code)


# --- FastAPI's handlers (the routes FastAPI serves: models, health, metrics, docs) -----------------


async def _exception(_: Request, exc: Exception) -> OrjsonResponse:
    return api_error_response(as_api_error(exc))


async def _validation(_: Request, exc: Exception) -> OrjsonResponse:
    assert isinstance(exc, RequestValidationError)
    return api_error_response(validation_error(exc.errors(), 422))


async def _http(_: Request, exc: Exception) -> OrjsonResponse:
    assert isinstance(exc, HTTPException)
    codes = {404: "not_found", 405: "method_not_allowed"}
    code = codes.get(exc.status_code, "invalid_request")
    kind = "not_found" if exc.status_code == 404 else "invalid_request_error"
    return error_response(exc.status_code, str(exc.detail), type=kind, code=code, headers=exc.headers)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(HTTPException, _http)
    # Named kinds are answered by Starlette's ExceptionMiddleware; `Exception` goes to the outermost
    # ServerErrorMiddleware, which answers and then re-raises (logged by the server).
    kinds = (
        ApiError,
        Overloaded,
        ShuttingDown,
        CacheUnavailable,
        InferenceFailed,
        ClientDisconnected,
        UnknownModel,
    )
    for kind in kinds:
        app.add_exception_handler(kind, _exception)
    app.add_exception_handler(Exception, _exception)
