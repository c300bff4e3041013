"""JSON responses rendered with orjson (numpy vectors serialised natively), the bodies of the embed
routes (serialised once, no pydantic pass over a response we build) and the per-request timing
headers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import orjson
from fastapi.responses import JSONResponse

from service.api.encodings import VectorEncoding, encode_vector
from service.embeddings import Embeddings

ORJSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


class ServedIdentity(Protocol):
    """What an answer says about the model that computed it (`service.registry.ServedModel`)."""

    @property
    def name(self) -> str: ...
    @property
    def fingerprint(self) -> str: ...
    @property
    def dim(self) -> int: ...


class OrjsonResponse(JSONResponse):
    # A JSONResponse subclass, so FastAPI documents each route's response_model in the OpenAPI schema.

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=ORJSON_OPTIONS)


def _vector_fields(vector: np.ndarray, encoding: VectorEncoding) -> dict[str, object]:
    """``embedding`` (a float32 row as the array itself - orjson writes it - or a base64 string)
    and, for int8, its ``scale``."""
    embedding, scale = encode_vector(vector, encoding)
    return {"embedding": embedding} if scale is None else {"embedding": embedding, "scale": scale}


def _served_model(artifact: ServedIdentity, encoding: VectorEncoding, dim: int) -> dict[str, object]:
    """The fields that say which model, size and encoding a body's vectors are."""
    return {
        "model": artifact.name,
        "fingerprint": artifact.fingerprint,
        "dim": dim,
        "encoding": encoding,
    }


def embed_body(
    artifact: ServedIdentity,
    encoding: VectorEncoding,
    dim: int,
    ids: Sequence[str | None],
    rows: Embeddings,
    cached: Sequence[bool],
) -> bytes:
    """The `EmbedResponse` JSON; vectors are the first ``dim`` components of the rows."""
    content = {
        **_served_model(artifact, encoding, dim),
        "data": [
            {
                "id": item_id,
                **_vector_fields(vector[:dim], encoding),
                "cached": hit,
                "tokens": tokens,
                "truncated": truncated,
            }
            for item_id, vector, hit, tokens, truncated in zip(
                ids, rows.vectors, cached, rows.tokens.tolist(), rows.truncated.tolist(), strict=True
            )
        ],
    }
    return orjson.dumps(content, option=ORJSON_OPTIONS)


def openai_body(artifact: ServedIdentity, encoding: VectorEncoding, dim: int, rows: Embeddings) -> bytes:
    """The `OpenAIEmbeddingsResponse` JSON (float or base64 only: `OPENAI_ENCODINGS`); usage counts
    the tokens the model embedded."""
    tokens = int(rows.tokens.sum())
    content = {
        "object": "list",
        "data": [
            {"object": "embedding", "index": index, "embedding": encode_vector(vector[:dim], encoding)[0]}
            for index, vector in enumerate(rows.vectors)
        ],
        "model": artifact.name,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    return orjson.dumps(content, option=ORJSON_OPTIONS)


def lookup_body(
    artifact: ServedIdentity,
    encoding: VectorEncoding,
    dim: int,
    ids: Sequence[str],
    found: dict[str, np.ndarray],
) -> bytes:
    """The `LookupResponse` JSON (each id once, in request order)."""
    unique = list(dict.fromkeys(ids))
    content = {
        **_served_model(artifact, encoding, dim),
        "data": [
            {"id": item_id, **_vector_fields(found[item_id][:dim], encoding)}
            for item_id in unique
            if item_id in found
        ],
        "unknown": [item_id for item_id in unique if item_id not in found],
    }
    return orjson.dumps(content, option=ORJSON_OPTIONS)


def json_headers(content: bytes, *extra: tuple[bytes, bytes]) -> list[tuple[bytes, bytes]]:
    """ASGI headers of a JSON body."""
    return [(b"content-type", b"application/json"), (b"content-length", str(len(content)).encode()), *extra]


_NO_MODEL_TIME = ((b"x-queue-time-ms", b"0.000"), (b"x-inference-time-ms", b"0.000"))


def timing_headers(
    *, queue_seconds: float, inference_seconds: float, cache_hits: int
) -> list[tuple[bytes, bytes]]:
    if queue_seconds == inference_seconds == 0.0:  # all hits: nothing to format but the count
        return [*_NO_MODEL_TIME, (b"x-cache-hits", b"%d" % cache_hits)]
    return [
        (b"x-queue-time-ms", f"{queue_seconds * 1000:.3f}".encode()),
        (b"x-inference-time-ms", f"{inference_seconds * 1000:.3f}".encode()),
        (b"x-cache-hits", str(cache_hits).encode()),
    ]
