"""FastAPI dependencies of the routes FastAPI serves (models, metrics, docs): the running service and
the optional API key."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.api.auth import bearer_token, check_api_key
from service.runtime import ServiceRuntime

bearer_scheme = HTTPBearer(
    auto_error=False, description="`Authorization: Bearer <MARC_API_KEY>`, required when the key is set."
)


async def get_runtime(request: Request) -> ServiceRuntime:
    # Set by the lifespan (Starlette copies the lifespan state into every request).
    return request.state.runtime


Runtime = Annotated[ServiceRuntime, Depends(get_runtime)]


async def require_api_key(
    runtime: Runtime,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> None:
    check_api_key(runtime.settings.api_key, credentials.credentials if credentials else "")


async def require_api_key_for_operations(runtime: Runtime, request: Request) -> None:
    """/metrics and the docs: the key only with ``MARC_PROTECT_METRICS_AND_DOCS`` (not declared as a
    security scheme: by default these routes are open)."""
    if runtime.settings.protect_metrics_and_docs:
        check_api_key(runtime.settings.api_key, bearer_token(request.headers.get("authorization")))
