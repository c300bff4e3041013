"""FastAPI dependencies: the running service and the optional API key."""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.errors import ApiError
from service.runtime import ServiceRuntime

bearer_scheme = HTTPBearer(
    auto_error=False, description="`Authorization: Bearer <MARC_API_KEY>`, required when the key is set."
)


async def get_runtime(request: Request) -> ServiceRuntime:
    # Set by the lifespan (Starlette copies the lifespan state into every request).
    return request.state.runtime


Runtime = Annotated[ServiceRuntime, Depends(get_runtime)]


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


async def require_api_key(
    runtime: Runtime,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> None:
    expected = runtime.settings.api_key
    if not expected:
        return
    supplied = credentials.credentials if credentials else ""
    # Constant time: hashing first hides the key's length too, compare_digest hides matched prefixes.
    if not hmac.compare_digest(_digest(supplied), _digest(expected)):
        raise ApiError(
            401,
            "authorization: missing or invalid API key (send `Authorization: Bearer <key>`)",
            type="authentication_error",
            param="authorization",
            headers={"WWW-Authenticate": 'Bearer realm="marc"'},
        )
