"""Recommendation datasets: one in-memory shape (`RecDataset`) for every source."""

from __future__ import annotations

from typing import Any

from marc.data.dataset import Interactions, RecDataset
from marc.data.entities import make_entities
from marc.data.jsonl import load_jsonl, save_dataset
from marc.data.movielens import load_movielens
from marc.data.movielens100k import load_movielens100k
from marc.data.ratings import ITEM_TEXTS
from marc.data.synthetic import make_synthetic
from records.errors import DataError

DATASET_SPECS = (
    "'synthetic', 'entities', 'movielens:<dir>', 'movielens100k:<dir>' (either with ?text=kar or "
    "?text=title), 'jsonl:<dir>'"
)
# Real rating data: the item-cold protocol of marc.data.ratings (seeded by `seed`).
_RATING_LOADERS = {"movielens": load_movielens, "movielens100k": load_movielens100k}


def parse_spec(spec: str) -> tuple[str, str, dict[str, str]]:
    """(kind, location, options) of "kind:location?key=value&key=value"; location and options may be empty."""
    head, _, query = spec.partition("?")
    kind, _, location = head.partition(":")
    options: dict[str, str] = {}
    for pair in filter(None, query.split("&")):
        key, equals, value = pair.partition("=")
        if not equals or not key or not value:
            raise DataError(f"dataset spec {spec!r}: option {pair!r} is not key=value")
        options[key] = value
    return kind, location, options


def load_dataset(spec: str, seed: int = 0, **sizes: Any) -> RecDataset:
    """The dataset named by `spec` (one of DATASET_SPECS).

    `seed` and `sizes` go to the generators (e.g. num_items, num_users, interactions_per_user,
    cold_fraction), to the random split of `jsonl:` (cold_fraction, valid_fraction, test_fraction)
    and to the item-cold split of the MovieLens specs (which take only cold_fraction). The
    MovieLens specs take the option `text` (`kar`, the default, or `title`: see
    `marc.data.ratings.ITEM_TEXTS`), e.g. `movielens100k:data/ml-100k?text=title`.
    """
    kind, location, options = parse_spec(spec)
    if kind in _RATING_LOADERS and location:
        unknown = sorted(set(options) - {"text"})
        if unknown:
            raise DataError(
                f"dataset spec {spec!r}: unknown option {unknown[0]!r} (options: text={'|'.join(ITEM_TEXTS)})"
            )
        other = sorted(set(sizes) - {"cold_fraction"})
        if other:
            raise ValueError(f"{kind} takes only the size option cold_fraction, got {other}")
        return _RATING_LOADERS[kind](location, seed=seed, **options, **sizes)
    if options:
        raise DataError(f"dataset spec {spec!r}: {kind!r} takes no ?options")
    if kind == "synthetic" and not location:
        return make_synthetic(seed=seed, **sizes)
    if kind == "entities" and not location:
        return make_entities(seed=seed, **sizes)
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
    "load_movielens100k",
    "make_entities",
    "make_synthetic",
    "parse_spec",
    "save_dataset",
]
