"""Per-row test predictions of one model: the file `marc.stats` compares models with.

One `.npz` file (numpy only, no pickle) per model and seed, with one entry per row of the scored
split, in the split's order:

* `row` (int64): the row's index in the split (`RecDataset.test`), so two files can be paired;
* `user`, `item` (int64): the user and item indices of the row (`RecDataset.item_ids[item]`);
* `label` (float32, 0/1), `score` (float64, the model's score or probability);
* `cold` (bool): the item is cold (never in train);
* `meta`: a JSON object (string) saying what produced the scores (dataset, model, seed, ...).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from marc.data.dataset import Interactions
from records.errors import DataError

FIELDS: dict[str, type] = {
    "row": np.int64,
    "user": np.int64,
    "item": np.int64,
    "label": np.float32,
    "score": np.float64,
    "cold": np.bool_,
}


@dataclass
class Predictions:
    rows: np.ndarray
    users: np.ndarray
    items: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    cold: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.rows)

    def subset(self, mask: np.ndarray) -> Predictions:
        return Predictions(
            self.rows[mask],
            self.users[mask],
            self.items[mask],
            self.labels[mask],
            self.scores[mask],
            self.cold[mask],
            dict(self.meta),
        )

    def part(self, name: str) -> Predictions:
        """'all', 'cold' or 'warm' rows."""
        if name == "all":
            return self
        if name in ("cold", "warm"):
            return self.subset(self.cold if name == "cold" else ~self.cold)
        raise ValueError(f"part must be 'all', 'cold' or 'warm', got {name!r}")

    def check_paired(self, other: Predictions) -> None:
        """Raise `ValueError` unless `other` scores the same rows (rows, users, items, labels)."""
        for name in ("rows", "users", "items", "labels"):
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine.shape != theirs.shape or not np.array_equal(mine, theirs):
                raise ValueError(
                    f"the two prediction sets do not score the same rows: field '{name}' differs "
                    f"({len(mine)} vs {len(theirs)} rows)"
                )


def predictions_for(
    split: Interactions, scores: np.ndarray, cold_items: np.ndarray, **meta: Any
) -> Predictions:
    """`Predictions` of `scores`, one per row of `split` in order (`cold_items`: the dataset's mask)."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (len(split),):
        raise ValueError(f"scores must have one value per row ({len(split)}), got shape {scores.shape}")
    return Predictions(
        np.arange(len(split), dtype=np.int64),
        split.users.astype(np.int64),
        split.items.astype(np.int64),
        split.labels.astype(np.float32),
        scores,
        cold_items[split.items].astype(bool),
        meta,
    )


def save_predictions(path: str | Path, predictions: Predictions) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {
        "row": predictions.rows,
        "user": predictions.users,
        "item": predictions.items,
        "label": predictions.labels,
        "score": predictions.scores,
        "cold": predictions.cold,
    }
    arrays = {name: np.asarray(value, dtype=FIELDS[name]) for name, value in arrays.items()}
    with path.open("wb") as handle:  # a file handle: np.savez would append ".npz" to other names
        np.savez_compressed(handle, meta=np.array(json.dumps(predictions.meta, default=str)), **arrays)
    return path


def load_predictions(path: str | Path) -> Predictions:
    """Read a file of `save_predictions`; `DataError` names the file and the field that is wrong."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"missing predictions file: expected {path}")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise DataError.at(path, None, f"not a predictions .npz file ({error})") from None
    with archive:
        columns: dict[str, np.ndarray] = {}
        for name, dtype in FIELDS.items():
            if name not in archive.files:
                raise DataError.at(path, None, f"missing field '{name}'")
            column = archive[name]
            if column.ndim != 1 or not np.can_cast(column.dtype, dtype, casting="same_kind"):
                raise DataError.at(
                    path, None, f"field '{name}' must be a 1-d {np.dtype(dtype)} array, got {column.dtype}"
                )
            columns[name] = column.astype(dtype)
        meta = json.loads(str(archive["meta"])) if "meta" in archive.files else {}
    lengths = {name: len(column) for name, column in columns.items()}
    if len(set(lengths.values())) > 1:
        raise DataError.at(path, None, f"fields have different lengths: {lengths}")
    if not np.isin(columns["label"], (0.0, 1.0)).all():
        raise DataError.at(path, None, "field 'label' must hold only 0 and 1")
    if not np.isfinite(columns["score"]).all():
        raise DataError.at(path, None, "field 'score' holds NaN or infinite values")
    return Predictions(
        columns["row"],
        columns["user"],
        columns["item"],
        columns["label"],
        columns["score"],
        columns["cold"],
        meta,
    )
