"""The value type every layer of the service passes around: embedded rows. The lowest layer of
`service/`: the model side (`service.model`), the caches (`service.cache`), the flow and the HTTP
edge all import it, and it imports none of them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Embeddings:
    """Rows of embedded texts: float32 vectors [n, dim], tokens the model embedded per text, and
    whether each text was longer than the model's max_length (embedded truncated)."""

    vectors: np.ndarray
    tokens: np.ndarray  # int [n]
    truncated: np.ndarray  # bool [n]

    @classmethod
    def empty(cls, rows: int, dim: int) -> Embeddings:
        return cls(np.empty((rows, dim), np.float32), np.zeros(rows, np.int64), np.zeros(rows, bool))

    def put(self, rows: Sequence[int], other: Embeddings) -> None:
        self.vectors[rows] = other.vectors
        self.tokens[rows] = other.tokens
        self.truncated[rows] = other.truncated

    def take(self, rows: Sequence[int] | np.ndarray) -> Embeddings:
        return Embeddings(self.vectors[rows], self.tokens[rows], self.truncated[rows])
