"""JSON responses rendered with orjson (numpy vectors serialised natively), the /v1/embed body and
the per-request timing headers."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson
from fastapi.responses import JSONResponse

from artifact.loader import LoadedArtifact
from service.schemas import VectorEncoding

ORJSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


class OrjsonResponse(JSONResponse):
    # A JSONResponse subclass, so FastAPI documents each route's response_model in the OpenAPI schema.

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=ORJSON_OPTIONS)


def encode_vector(vector: np.ndarray, encoding: VectorEncoding) -> np.ndarray | str:
    """A float32 row as JSON numbers (the array itself; orjson writes it) or base64 little-endian."""
    if encoding == "float":
        return vector
    dtype = "<f2" if encoding == "base64_fp16" else "<f4"
    return base64.b64encode(vector.astype(dtype, copy=False).tobytes()).decode("ascii")


def embed_body(
    artifact: LoadedArtifact,
    encoding: VectorEncoding,
    ids: Sequence[str | None],
    vectors: np.ndarray,
    cached: Sequence[bool],
) -> bytes:
    """The `EmbedResponse` JSON, serialised once (no pydantic pass over a response we build)."""
    content = {
        "model": artifact.name,
        "fingerprint": artifact.fingerprint,
        "dim": artifact.dim,
        "encoding": encoding,
        "data": [
            {"id": item_id, "embedding": encode_vector(vector, encoding), "cached": hit}
            for item_id, vector, hit in zip(ids, vectors, cached, strict=True)
        ],
    }
    return orjson.dumps(content, option=ORJSON_OPTIONS)


def timing_headers(*, queue_seconds: float, inference_seconds: float, cache_hits: int) -> dict[str, str]:
    return {
        "x-queue-time-ms": f"{queue_seconds * 1000:.3f}",
        "x-inference-time-ms": f"{inference_seconds * 1000:.3f}",
        "x-cache-hits": str(cache_hits),
    }
