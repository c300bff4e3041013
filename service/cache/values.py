"""How embedded items are stored as cache values: the vector as raw little-endian bytes of
``MARC_CACHE_DTYPE``, then a 4-byte trailer with what the model saw of the text - the number of
tokens it embedded (uint16) and whether the text was cut at the model's ``max_length`` (uint16 flags,
bit 0) - so a cached answer reports truncation and token usage exactly as a computed one, without
tokenising the text again.

float32 keeps the model's output exactly (4·k + 4 bytes). float16 halves the vector (2·k + 4 bytes,
132 B for k = 64): each component is rounded to the nearest float16, a relative error of at most 2^-11
(≈ 4.9e-4) for normal values - an absolute error of at most 2^-11·|x| (≈ 2.4e-4 for |x| < 0.5,
4.9e-4 for |x| < 1) - and values are widened back to float32 when served. With float16 the service
serves the rounded vector for misses too, so a text gets the same answer whether it came from the
cache or from the model.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Literal

import numpy as np

from service.embeddings import Embeddings

CacheDtype = Literal["float32", "float16"]
VALUE_DTYPES: dict[str, np.dtype] = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2")}
TRUNCATED = 1  # bit of the flags field
TRAILER_BYTES = 4
TRAILER = struct.Struct("<HH")  # tokens, flags: the same bytes as the record's trailer fields
FEW_ROWS = 4  # up to this many rows are encoded one by one (cheaper than building a record array)


class ValueCodec:
    """Embedded rows <-> cache values of one vector dtype."""

    def __init__(self, cache_dtype: CacheDtype, dim: int) -> None:
        self.dtype = VALUE_DTYPES[cache_dtype]
        self.dim = dim
        self._record = np.dtype([("vector", self.dtype, (dim,)), ("tokens", "<u2"), ("flags", "<u2")])
        self.value_bytes = self._record.itemsize  # dim · dtype size + TRAILER_BYTES

    def valid(self, value: bytes | None) -> bool:
        # A value of the wrong size (other dtype or layout, another writer, a corrupted key) is a miss.
        return value is not None and len(value) == self.value_bytes

    def encode(self, rows: Embeddings) -> list[bytes]:
        """One value per row."""
        if len(rows.vectors) <= FEW_ROWS:  # single items: bytes and a packed trailer, no record array
            vectors = rows.vectors.astype(self.dtype, copy=False)
            return [
                vector.tobytes() + TRAILER.pack(tokens, TRUNCATED if truncated else 0)
                for vector, tokens, truncated in zip(
                    vectors, rows.tokens.tolist(), rows.truncated.tolist(), strict=True
                )
            ]
        records = np.empty(len(rows.vectors), self._record)
        records["vector"] = rows.vectors
        records["tokens"] = rows.tokens
        records["flags"] = np.where(rows.truncated, TRUNCATED, 0)
        data = records.tobytes()
        size = self.value_bytes
        return [data[start : start + size] for start in range(0, len(data), size)]

    def decode(self, values: Sequence[bytes]) -> Embeddings:
        """Rows from equally sized (valid) values."""
        records = np.frombuffer(b"".join(values), self._record)
        return Embeddings(
            records["vector"].astype(np.float32),  # a copy also for float32: the buffer is read-only
            records["tokens"].astype(np.int64),
            (records["flags"] & TRUNCATED) != 0,
        )

    def round_trip(self, vectors: np.ndarray) -> np.ndarray:
        """What ``vectors`` read back from the cache will be (float32)."""
        if self.dtype == VALUE_DTYPES["float32"]:
            return vectors
        return vectors.astype(self.dtype).astype(np.float32)
