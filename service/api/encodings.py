"""Wire encodings of a served vector (the ``encoding`` of `/v1/embed` and `/v1/items/lookup`,
``encoding_format`` of `/v1/embeddings`). One function per encoding turns a float32 row into what
the JSON body carries; the decoders of docs/api.md (executed by
tests/service/api/test_encodings.py) undo each.

=========  =====================================================  ==================  ===============
encoding   body                                                   bytes (k = 64)      decoded
=========  =====================================================  ==================  ===============
float      JSON numbers                                           ~11·k text          exact float32
base64     base64 of little-endian float32                        4·k (344 b64)       exact float32
float16    base64 of little-endian float16 (alias base64_fp16)    2·k (172 b64)       nearest float16
int8       base64 of int8 q, plus ``scale`` (a float32 number)    k + 4 (88 b64 + #)  q · scale
binary     base64 of the sign bits (1 = x > 0), packed MSB-first  ceil(k/8) (12 b64)  sign only
=========  =====================================================  ==================  ===============

int8 is symmetric and per vector: ``scale = max|x| / 127`` (float32), ``q = round(x / scale)``, so
the largest component is exact and every other one is within scale/2. An all-zero vector has scale
0 and q = 0. A nested prefix (``dimensions``) is sliced from the float vector *before* encoding, so
its int8 scale and its bits are the prefix's own.
"""

from __future__ import annotations

import base64
from typing import Literal

import numpy as np

VectorEncoding = Literal["float", "base64", "float16", "base64_fp16", "int8", "binary"]
WIRE_ENCODINGS: tuple[VectorEncoding, ...] = ("float", "base64", "float16", "base64_fp16", "int8", "binary")
OPENAI_ENCODINGS = ("float", "base64")
INT8_LEVELS = 127  # symmetric: -127..127, so -x encodes as -q


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def int8_quantised(vector: np.ndarray) -> tuple[np.ndarray, np.float32]:
    """(q int8 [k], scale float32) with q · scale ≈ vector, |error| <= scale / 2 per component."""
    peak = np.float32(np.abs(vector).max()) if len(vector) else np.float32(0)
    scale = np.float32(peak / np.float32(INT8_LEVELS))
    if scale == 0:
        return np.zeros(len(vector), np.int8), np.float32(0)
    q = np.clip(np.rint(vector / scale), -INT8_LEVELS, INT8_LEVELS).astype(np.int8)
    return q, scale


def sign_bits(vector: np.ndarray) -> bytes:
    """Bit i = 1 when vector[i] > 0, packed most significant bit first; the last byte is padded
    with zero bits."""
    return np.packbits(vector > 0, bitorder="big").tobytes()


def encode_vector(vector: np.ndarray, encoding: VectorEncoding) -> tuple[np.ndarray | str, np.float32 | None]:
    """(the ``embedding`` field, the int8 ``scale`` or None) of a float32 row."""
    if encoding == "float":
        return vector, None
    if encoding == "base64":
        return _b64(vector.astype("<f4", copy=False).tobytes()), None
    if encoding in ("float16", "base64_fp16"):
        return _b64(vector.astype("<f2").tobytes()), None
    if encoding == "int8":
        q, scale = int8_quantised(vector)
        return _b64(q.tobytes()), scale
    if encoding == "binary":
        return _b64(sign_bits(vector)), None
    raise ValueError(f"encoding {encoding!r} is not one of {', '.join(WIRE_ENCODINGS)}")


def wire_bytes(dim: int, encoding: VectorEncoding) -> int:
    """Bytes of one vector's payload before base64 (float: 4·dim, as float32 in memory)."""
    sizes = {
        "float": 4 * dim,
        "base64": 4 * dim,
        "float16": 2 * dim,
        "base64_fp16": 2 * dim,
        "int8": dim + 4,
        "binary": -(-dim // 8),
    }
    return sizes[encoding]
