"""The one dataset shape every loader produces and every trainer/evaluator consumes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Interactions:
    """Parallel arrays, one row per (user, item, label) event."""

    users: np.ndarray
    """int64 user index in [0, RecDataset.num_users)."""
    items: np.ndarray
    """int64 item index into RecDataset.item_ids / item_texts."""
    labels: np.ndarray
    """float32 click label, 0.0 or 1.0."""

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, mask: np.ndarray) -> Interactions:
        return Interactions(self.users[mask], self.items[mask], self.labels[mask])


@dataclass
class RecDataset:
    name: str
    item_ids: list[str]
    item_texts: list[str]
    num_users: int
    train: Interactions
    valid: Interactions
    test: Interactions
    cold_items: np.ndarray
    """bool [num_items]: True for items that never appear in `train` (cold-start items)."""
    meta: dict[str, Any] = field(default_factory=dict)
    """How the dataset was built (generator parameters, source files, split rule)."""

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    def warm(self, split: Interactions) -> Interactions:
        return split.subset(~self.cold_items[split.items])

    def cold(self, split: Interactions) -> Interactions:
        return split.subset(self.cold_items[split.items])
