"""Every error leaves as JSON ``{"error": {"message", "type", "param", "code"}}`` (OpenAI's shape, so
the openai SDK shows the message), with the field named in ``param`` and in the message."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from service.batcher import InferenceFailed, Overloaded, ShuttingDown
from service.cache import CacheUnavailable
from service.disconnect import ClientDisconnected
from service.responses import OrjsonResponse

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param = status, message, type, param
        self.headers = dict(headers or {})


def error_response(
    status: int,
    message: str,
    *,
    type: str,
    param: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> OrjsonResponse:
    body = {"error": {"message": message, "type": type, "param": param, "code": status}}
    return OrjsonResponse(body, status_code=status, headers=dict(headers or {}))


def _field_path(loc: Sequence[Any]) -> str:
    parts = [str(part) for part in loc]
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    return ".".join(parts) or "body"


def validation_message(errors: Sequence[Mapping[str, Any]]) -> tuple[str, str]:
    """("items.0.text: must not be empty; ...", "items.0.text") from pydantic/FastAPI errors."""
    described: list[str] = []
    for error in errors[:10]:
        path = _field_path(error.get("loc", ()))
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        if error.get("type") == "json_invalid":
            detail = (error.get("ctx") or {}).get("error", "")
            path, message = "body", f"malformed JSON at character {error['loc'][-1]} ({detail})"
        described.append(f"{path}: {message}")
    if len(errors) > 10:
        described.append(f"... and {len(errors) - 10} more")
    first = errors[0] if errors else {}
    param = "body" if first.get("type") == "json_invalid" else _field_path(first.get("loc", ()))
    return "; ".join(described), param


async def _api_error(_: Request, exc: Exception) -> OrjsonResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.message, type=exc.type, param=exc.param, headers=exc.headers)


async def _validation_error(_: Request, exc: Exception) -> OrjsonResponse:
    assert isinstance(exc, RequestValidationError)
    message, param = validation_message(exc.errors())
    return error_response(422, message, type="invalid_request_error", param=param)


def _unparsable_body(cause: BaseException | None) -> str:
    if isinstance(cause, UnicodeDecodeError):
        return f"malformed JSON: not valid UTF-8 (byte {cause.start}: {cause.reason})"
    if isinstance(cause, RecursionError):
        return "malformed JSON: nested too deeply"
    return f"malformed JSON ({type(cause).__name__ if cause else 'unreadable body'})"


async def _http_error(_: Request, exc: Exception) -> OrjsonResponse:
    assert isinstance(exc, HTTPException)
    kind = "not_found" if exc.status_code == 404 else "invalid_request_error"
    if exc.status_code == 400:  # FastAPI's "error parsing the body": the JSON decoder raised
        return error_response(422, f"body: {_unparsable_body(exc.__cause__)}", type=kind, param="body")
    return error_response(exc.status_code, str(exc.detail), type=kind, headers=exc.headers)


async def _unavailable(_: Request, exc: Exception) -> OrjsonResponse:
    retry_after = getattr(exc, "retry_after_seconds", 1)
    kind = {Overloaded: "overloaded", ShuttingDown: "shutting_down"}.get(type(exc), "cache_unavailable")
    return error_response(503, str(exc), type=kind, headers={"Retry-After": str(retry_after)})


async def _inference_failed(_: Request, exc: Exception) -> OrjsonResponse:
    return error_response(500, str(exc), type="server_error")


async def _client_gone(_: Request, exc: Exception) -> OrjsonResponse:
    # Nobody reads this; 499 (nginx's "client closed request") keeps it apart in the metrics.
    return error_response(499, "client closed the connection", type="client_closed_request")


async def _unexpected(_: Request, exc: Exception) -> OrjsonResponse:
    log.exception("unhandled error", exc_info=exc)
    return error_response(500, "internal error (logged)", type="server_error")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    for kind in (Overloaded, ShuttingDown, CacheUnavailable):
        app.add_exception_handler(kind, _unavailable)
    app.add_exception_handler(InferenceFailed, _inference_failed)
    app.add_exception_handler(ClientDisconnected, _client_gone)
    app.add_exception_handler(Exception, _unexpected)
