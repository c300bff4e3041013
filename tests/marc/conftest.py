"""Fixtures the training tests share: a small synthetic dataset and its pooled tiny-backbone states."""

from __future__ import annotations

import numpy as np
import pytest

from marc.backbone import load_backbone
from marc.data import RecDataset, make_synthetic
from marc.features import pooled_states

TRAIN_LAYER = 2  # of the tiny backbone's 4: the layer the training tests cut at


@pytest.fixture(scope="module")
def data() -> RecDataset:
    return make_synthetic(num_items=240, num_users=120, interactions_per_user=30, seed=0)


@pytest.fixture(scope="module")
def pooled(data: RecDataset) -> np.ndarray:
    """Pooled states of layer TRAIN_LAYER for ``data``'s item texts."""
    return pooled_states(load_backbone("tiny"), data.item_texts, [TRAIN_LAYER], max_length=32)[TRAIN_LAYER]
