"""Train/valid/test split rules shared by the generators and the loaders (numpy only)."""

from __future__ import annotations

import numpy as np

from marc.data.dataset import Interactions

SPLIT_NAMES: tuple[str, str, str] = ("train", "valid", "test")


def never_in_train(num_items: int, train: Interactions) -> np.ndarray:
    """bool [num_items]: the cold items, i.e. items with no training interaction."""
    seen = np.zeros(num_items, dtype=bool)
    seen[train.items] = True
    return ~seen


def assign_cold_item_split(
    items: np.ndarray,
    held_out_items: np.ndarray,
    rng: np.random.Generator,
    valid_fraction: float = 0.1,
    test_fraction: float = 0.1,
) -> np.ndarray:
    """Split code per row (0 train, 1 valid, 2 test).

    Rows of `held_out_items` (a bool item mask) never go to train: half of those items send all
    their rows to valid, the other half to test, so both splits measure cold-start. Every other row
    is assigned at random with the given valid/test fractions.
    """
    codes = np.zeros(len(items), dtype=np.int8)
    draw = rng.random(len(items))
    codes[draw < valid_fraction + test_fraction] = 2
    codes[draw < valid_fraction] = 1
    _send_held_out_rows(codes, items, held_out_items, rng)
    return codes


def hold_out_items(
    num_items: int, fraction: float, rng: np.random.Generator, eligible: np.ndarray | None = None
) -> np.ndarray:
    """bool [num_items]: `round(fraction * n)` items drawn at random among the `eligible` ones
    (a bool mask; default all n items)."""
    candidates = np.arange(num_items) if eligible is None else np.flatnonzero(eligible)
    held_out = np.zeros(num_items, dtype=bool)
    held_out[candidates[rng.permutation(len(candidates))[: round(fraction * len(candidates))]]] = True
    return held_out


def _send_held_out_rows(
    codes: np.ndarray, items: np.ndarray, held_out_items: np.ndarray, rng: np.random.Generator
) -> None:
    """Set the codes of the rows of held-out items: a random half of those items (rounded down) send
    all their rows to valid (1), the others to test (2)."""
    held_out = np.flatnonzero(held_out_items)
    rng.shuffle(held_out)
    valid_items = np.zeros_like(held_out_items)
    valid_items[held_out[: len(held_out) // 2]] = True
    cold_rows = held_out_items[items]
    codes[cold_rows] = np.where(valid_items[items[cold_rows]], 1, 2)


def assign_item_cold_time_split(
    users: np.ndarray,
    items: np.ndarray,
    timestamps: np.ndarray,
    held_out_items: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Split code per row (0 train, 1 valid, 2 test): the item-cold protocol for real data.

    Rows of `held_out_items` go to valid or test by item as in `assign_cold_item_split`; every
    other row is split per user by time (`assign_time_split` over those rows only).
    """
    codes = np.zeros(len(items), dtype=np.int8)
    warm = ~held_out_items[items]
    codes[warm] = assign_time_split(users[warm], timestamps[warm])
    _send_held_out_rows(codes, items, held_out_items, rng)
    return codes


def assign_time_split(
    users: np.ndarray,
    timestamps: np.ndarray,
    test_fraction: float = 0.1,
    valid_fraction_of_train: float = 0.1,
) -> np.ndarray:
    """Split code per row by time within each user (the KAR-style 9:1 split).

    Each user's rows are ordered by timestamp (ties keep file order); the last `test_fraction`
    go to test, and the last `valid_fraction_of_train` of the remaining rows go to valid. A user
    keeps at least one training row whenever they have one.
    """
    order = np.lexsort((np.arange(len(users)), timestamps, users))
    sorted_users = users[order]
    starts = np.flatnonzero(np.r_[True, sorted_users[1:] != sorted_users[:-1]])
    counts = np.diff(np.r_[starts, len(users)])
    rank = np.arange(len(users)) - np.repeat(starts, counts)
    count = np.repeat(counts, counts)
    n_test = np.floor(count * test_fraction).astype(np.int64)
    n_fit = count - n_test
    n_valid = np.floor(n_fit * valid_fraction_of_train).astype(np.int64)
    codes_sorted = np.zeros(len(users), dtype=np.int8)
    codes_sorted[rank >= n_fit - n_valid] = 1
    codes_sorted[rank >= n_fit] = 2
    codes = np.empty_like(codes_sorted)
    codes[order] = codes_sorted
    return codes


def split_rows(
    users: np.ndarray, items: np.ndarray, labels: np.ndarray, codes: np.ndarray
) -> tuple[Interactions, Interactions, Interactions]:
    """(train, valid, test) `Interactions` from per-row split codes 0/1/2."""
    users = users.astype(np.int64)
    items = items.astype(np.int64)
    labels = labels.astype(np.float32)
    parts = [Interactions(users[codes == c], items[codes == c], labels[codes == c]) for c in range(3)]
    return parts[0], parts[1], parts[2]
