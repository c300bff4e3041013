"""Recommendation datasets: one in-memory shape (`RecDataset`) for every source."""

from __future__ import annotations

from typing import Any

from marc.data.dataset import Interactions, RecDataset
from marc.data.entities import make_entities
from marc.data.jsonl import load_jsonl, save_dataset
from marc.data.movielens import load_movielens
from marc.data.synthetic import make_synthetic
from records.errors import DataError

DATASET_SPECS = "'synthetic', 'entities', 'movielens:<dir>', 'jsonl:<dir>'"


def load_dataset(spec: str, seed: int = 0, **sizes: Any) -> RecDataset:
    """The dataset named by `spec` (one of DATASET_SPECS).

    `seed` and `sizes` go to the generators (e.g. num_items, num_users, interactions_per_user,
    cold_fraction) and to the random split of `jsonl:` (cold_fraction, valid_fraction, test_fraction);
    `movielens:` uses a fixed time split and takes no sizes.
    """
    kind, _, location = spec.partition(":")
    if kind == "synthetic" and not location:
        return make_synthetic(seed=seed, **sizes)
    if kind == "entities" and not location:
        return make_entities(seed=seed, **sizes)
    if kind == "movielens" and location:
        if sizes:
            raise ValueError(f"movielens takes no size options, got {sorted(sizes)}")
        return load_movielens(location)
    if kind == "jsonl" and location:
        return load_jsonl(location, seed=seed, **sizes)
    raise DataError(f"unknown dataset spec {spec!r}: expected one of {DATASET_SPECS}")


__all__ = [
    "DATASET_SPECS",
    "Interactions",
    "RecDataset",
    "load_dataset",
    "load_jsonl",
    "load_movielens",
    "make_entities",
    "make_synthetic",
    "save_dataset",
]
