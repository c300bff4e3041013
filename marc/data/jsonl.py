"""JSON-lines dataset format (numpy only, no torch; items.jsonl is read by `records.jsonl`, which
`marc precompute` streams item files with too).

A dataset directory holds:

* `items.jsonl` — one object per line: `item_id` (string or integer), `text` (non-empty string).
* `interactions.jsonl` — `user_id` (string or integer), `item_id` (must be in items.jsonl),
  `label` (0/1 or true/false), optional `timestamp` (number), optional `split`
  ("train"/"valid"/"test"). Either every line has `timestamp` (or `split`) or none does.
* optional `meta.json` + `meta_arrays.npz` — written by `save_dataset`, restored into `RecDataset.meta`.

Split rule: the `split` column when present (so saved datasets reload with the same split); else by
time within each user (last 10% test, last 10% of the rest valid) when timestamps are present; else
random (seeded), optionally holding `cold_fraction` of the items out of train. Cold items are the
items that never appear in train.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from marc.data.dataset import RecDataset
from marc.data.splits import (
    SPLIT_NAMES,
    assign_cold_item_split,
    assign_time_split,
    hold_out_items,
    never_in_train,
    split_rows,
)
from records.errors import DataError, require_file
from records.jsonl import id_field, iter_items_jsonl, iter_records

ITEMS_FILE = "items.jsonl"
INTERACTIONS_FILE = "interactions.jsonl"
META_FILE = "meta.json"
META_ARRAYS_FILE = "meta_arrays.npz"


def _label_field(record: dict[str, Any], path: Path, line: int) -> float:
    if "label" not in record:
        raise DataError.at(path, line, "missing field 'label'")
    value = record["label"]
    if isinstance(value, (bool, int, float)) and value in (0, 1):
        return float(value)
    raise DataError.at(path, line, f"field 'label' must be 0 or 1, got {value!r}")


class _OptionalColumn:
    """An optional field that must be on every line or on none (decided by the first line)."""

    def __init__(self, field: str, path: Path) -> None:
        self.field, self.path = field, path
        self.present: bool | None = None
        self.values: list[Any] = []

    def take(self, record: dict[str, Any], line: int) -> Any | None:
        has = self.field in record
        if self.present is None:
            self.present = has
        elif has != self.present:
            state = "missing" if self.present else "present"
            other = "have" if self.present else "lack"
            raise DataError.at(
                self.path,
                line,
                f"field '{self.field}' is {state}, but earlier lines {other} it "
                "(give it on every line or on none)",
            )
        return record[self.field] if has else None


def load_jsonl(
    directory: str | Path,
    seed: int = 0,
    cold_fraction: float = 0.0,
    valid_fraction: float = 0.1,
    test_fraction: float = 0.1,
) -> RecDataset:
    """Load `items.jsonl` + `interactions.jsonl` from `directory` (see the module docstring for the rules).

    `seed`, `cold_fraction`, `valid_fraction` and `test_fraction` apply to the random split only.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(
            f"dataset directory not found: {directory} (expected {ITEMS_FILE} + {INTERACTIONS_FILE})"
        )
    item_ids: list[str] = []
    item_texts: list[str] = []
    for item_id, text in iter_items_jsonl(directory / ITEMS_FILE):
        item_ids.append(item_id)
        item_texts.append(text)
    items_path = directory / ITEMS_FILE
    if not item_ids:
        raise DataError.at(items_path, None, "no items")
    item_index = {item_id: i for i, item_id in enumerate(item_ids)}

    path = require_file(directory / INTERACTIONS_FILE, "interactions")
    user_index: dict[str, int] = {}
    users: list[int] = []
    items: list[int] = []
    labels: list[float] = []
    timestamps = _OptionalColumn("timestamp", path)
    splits = _OptionalColumn("split", path)
    for line, record in iter_records(path):
        user_id = id_field(record, "user_id", path, line)
        item_id = id_field(record, "item_id", path, line)
        if item_id not in item_index:
            raise DataError.at(
                path, line, f"field 'item_id': unknown item id {item_id!r} (not in {ITEMS_FILE})"
            )
        labels.append(_label_field(record, path, line))
        timestamp = timestamps.take(record, line)
        if timestamp is not None:
            if isinstance(timestamp, bool) or not isinstance(timestamp, (int, float)):
                raise DataError.at(path, line, f"field 'timestamp' must be a number, got {timestamp!r}")
            timestamps.values.append(timestamp)
        split = splits.take(record, line)
        if split is not None:
            if split not in SPLIT_NAMES:
                raise DataError.at(
                    path, line, f"field 'split' must be one of {list(SPLIT_NAMES)}, got {split!r}"
                )
            splits.values.append(SPLIT_NAMES.index(split))
        users.append(user_index.setdefault(user_id, len(user_index)))
        items.append(item_index[item_id])
    if not labels:
        raise DataError.at(path, None, "no interactions")

    user_array = np.asarray(users, dtype=np.int64)
    item_array = np.asarray(items, dtype=np.int64)
    if splits.present:
        codes = np.asarray(splits.values, dtype=np.int8)
        rule = "split column of interactions.jsonl"
    elif timestamps.present:
        if cold_fraction:
            raise ValueError("cold_fraction applies to the random split only; this file has timestamps")
        codes = assign_time_split(user_array, np.asarray(timestamps.values, dtype=np.float64))
        rule = "per user by timestamp: last 10% test, last 10% of the rest valid"
    else:
        rng = np.random.default_rng(seed)
        held_out = hold_out_items(len(item_ids), cold_fraction, rng)
        codes = assign_cold_item_split(item_array, held_out, rng, valid_fraction, test_fraction)
        rule = (
            f"random (seed {seed}): valid {valid_fraction:g}, test {test_fraction:g}, "
            f"{cold_fraction:g} of items held out of train"
        )
    train, valid, test = split_rows(user_array, item_array, np.asarray(labels), codes)
    saved_meta = _read_meta(directory)
    name = str(saved_meta.pop("name", f"jsonl:{directory.name}"))
    meta = {
        **saved_meta,
        "source": str(directory),
        "format": "jsonl",
        "split": rule,
        "user_ids": list(user_index),
    }
    return RecDataset(
        name=name,
        item_ids=item_ids,
        item_texts=item_texts,
        num_users=len(user_index),
        train=train,
        valid=valid,
        test=test,
        cold_items=never_in_train(len(item_ids), train),
        meta=meta,
    )


def _read_meta(directory: Path) -> dict[str, Any]:
    """meta.json (+ its numpy arrays) written by `save_dataset`, or {} when absent."""
    meta_path = directory / META_FILE
    if not meta_path.is_file():
        return {}
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError.at(meta_path, None, f"not valid JSON ({error})") from None
    if not isinstance(meta, dict):
        raise DataError.at(meta_path, None, "expected a JSON object")
    arrays_path = directory / META_ARRAYS_FILE
    if arrays_path.is_file():
        with np.load(arrays_path, allow_pickle=False) as arrays:
            meta.update({key: arrays[key] for key in arrays.files})
    return meta


def save_dataset(dataset: RecDataset, directory: str | Path) -> Path:
    """Write `dataset` in the JSON-lines format so `load_jsonl(directory)` gives it back.

    Interactions carry a `split` column (so the reload keeps the split) and are written grouped by
    user in index order (so user indices survive the reload). `meta` goes to meta.json, its numpy
    arrays to meta_arrays.npz (no pickle).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / ITEMS_FILE).open("w", encoding="utf-8") as handle:
        for item_id, text in zip(dataset.item_ids, dataset.item_texts, strict=True):
            handle.write(json.dumps({"item_id": item_id, "text": text}, ensure_ascii=False) + "\n")

    parts = [dataset.train, dataset.valid, dataset.test]
    users = np.concatenate([p.users for p in parts])
    items = np.concatenate([p.items for p in parts])
    labels = np.concatenate([p.labels for p in parts])
    codes = np.concatenate([np.full(len(p), c, dtype=np.int8) for c, p in enumerate(parts)])
    user_ids = dataset.meta.get("user_ids") or [str(u) for u in range(dataset.num_users)]
    with (directory / INTERACTIONS_FILE).open("w", encoding="utf-8") as handle:
        for row in np.argsort(users, kind="stable"):
            record = {
                "user_id": user_ids[users[row]],
                "item_id": dataset.item_ids[items[row]],
                "label": int(labels[row]),
                "split": SPLIT_NAMES[codes[row]],
            }
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")

    plain: dict[str, Any] = {"name": dataset.name}
    arrays: dict[str, np.ndarray] = {}
    for key, value in dataset.meta.items():
        if key == "user_ids":  # already in interactions.jsonl
            continue
        if isinstance(value, np.ndarray):
            arrays[key] = value
        else:
            plain[key] = value
    (directory / META_FILE).write_text(
        json.dumps(plain, indent=2, default=_json_default) + "\n", encoding="utf-8"
    )
    if arrays:
        np.savez(directory / META_ARRAYS_FILE, **arrays)
    return directory


def _json_default(value: Any) -> Any:
    """numpy scalars in meta (e.g. a float64 intercept) become plain JSON numbers."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"meta value of type {type(value).__name__} is not JSON-serialisable")
