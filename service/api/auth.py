"""The API key check (``MARC_API_KEY``): the one place the key is compared, in constant time. Every
route that needs the key calls it once per request - the embed routes from their admission, the
FastAPI routes through `service.api.dependencies.require_api_key`."""

from __future__ import annotations

import hashlib
import hmac

from service.api.errors import ApiError


def bearer_token(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header; empty for anything else."""
    scheme, _, token = (authorization or "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def check_api_key(expected: str, supplied: str) -> None:
    """Raise 401 unless ``supplied`` is the key (any value passes when no key is configured)."""
    if not expected:
        return
    # Constant time: hashing first hides the key's length too, compare_digest hides matched prefixes.
    if not hmac.compare_digest(_digest(supplied), _digest(expected)):
        raise ApiError(
            401,
            "authorization: missing or invalid API key (send `Authorization: Bearer <key>`)",
            type="authentication_error",
            code="invalid_api_key",
            param="authorization",
            headers={"WWW-Authenticate": 'Bearer realm="marc"'},
        )
