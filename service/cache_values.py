"""How vectors are stored as cache values: raw little-endian bytes of ``MARC_CACHE_DTYPE``.

float32 keeps the model's output exactly (4·k bytes). float16 halves the memory (2·k bytes, 128 B
for k = 64): each component is rounded to the nearest float16, a relative error of at most 2^-11
(≈ 4.9e-4) for normal values - an absolute error of at most 2^-11·|x| (≈ 2.4e-4 for |x| < 0.5,
4.9e-4 for |x| < 1) - and values are widened back to float32 when served. With float16 the service
serves the rounded vector for misses too, so a text gets the same answer whether it came from the
cache or from the model.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

CacheDtype = Literal["float32", "float16"]
VALUE_DTYPES: dict[str, np.dtype] = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2")}


class ValueCodec:
    """Vectors (float32 rows) <-> cache values of one dtype."""

    def __init__(self, cache_dtype: CacheDtype, dim: int) -> None:
        self.dtype = VALUE_DTYPES[cache_dtype]
        self.dim = dim
        self.value_bytes = dim * self.dtype.itemsize

    def valid(self, value: bytes | None) -> bool:
        # A value of the wrong size (other dtype, another writer, a corrupted key) is a miss.
        return value is not None and len(value) == self.value_bytes

    def encode(self, vector: np.ndarray) -> bytes:
        return vector.astype(self.dtype, copy=False).tobytes()

    def decode(self, values: list[bytes]) -> np.ndarray:
        """float32 [len(values), dim] from equally sized values."""
        rows = np.frombuffer(b"".join(values), dtype=self.dtype).reshape(len(values), self.dim)
        return rows.astype(np.float32)

    def round_trip(self, vectors: np.ndarray) -> np.ndarray:
        """What ``vectors`` read back from the cache will be (float32)."""
        if self.dtype == VALUE_DTYPES["float32"]:
            return vectors
        return vectors.astype(self.dtype).astype(np.float32)
