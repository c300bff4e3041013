"""Click simulation shared by the synthetic generators: who sees what, and a calibrated logistic model."""

from __future__ import annotations

import numpy as np

from marc.data.dataset import RecDataset
from marc.data.splits import assign_cold_item_split, hold_out_items, never_in_train, split_rows

CLICK_MODEL = (
    "P(click | u, i) = sigmoid(intercept + user_bias[u] + user_weights[u] . item_features[i] + item_bias[i])"
)


def click_logits(meta: dict, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """The generator's true click logits for (user, item) pairs (from a simulated dataset's `meta`):
    the best any model can do, e.g. an upper bound for test AUC."""
    return (
        meta["intercept"]
        + meta["user_bias"][users]
        + np.einsum("nf,nf->n", meta["user_weights"][users], meta["item_features"][items])
        + meta["item_bias"][items]
    )


def sample_exposures(
    rng: np.random.Generator, num_users: int, num_items: int, per_user: int, popularity: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(users, items): each user is shown `per_user` distinct items drawn in proportion to popularity."""
    per_user = min(per_user, num_items)
    weights = popularity / popularity.sum()
    users = np.repeat(np.arange(num_users, dtype=np.int64), per_user)
    items = np.concatenate(
        [rng.choice(num_items, size=per_user, replace=False, p=weights) for _ in range(num_users)]
    ).astype(np.int64)
    return users, items


def calibrate_intercept(logits: np.ndarray, target_rate: float) -> float:
    """Intercept b such that mean(sigmoid(logits + b)) == target_rate (bisection; monotone in b)."""
    low, high = -20.0, 20.0
    for _ in range(60):
        mid = (low + high) / 2
        if np.mean(sigmoid(logits + mid)) < target_rate:
            low = mid
        else:
            high = mid
    return (low + high) / 2


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def build_simulated_dataset(
    name: str,
    rng: np.random.Generator,
    item_ids: list[str],
    item_texts: list[str],
    num_users: int,
    users: np.ndarray,
    items: np.ndarray,
    probabilities: np.ndarray,
    cold_fraction: float,
    meta: dict,
) -> RecDataset:
    """Draw clicks from `probabilities`, hold out `cold_fraction` of the items from train, split the rest."""
    labels = (rng.random(len(probabilities)) < probabilities).astype(np.float32)
    num_items = len(item_ids)
    held_out = hold_out_items(num_items, cold_fraction, rng)
    codes = assign_cold_item_split(items, held_out, rng)
    train, valid, test = split_rows(users, items, labels, codes)
    meta = {
        **meta,
        "split": "cold items (held out of train; half of them in valid, half in test); "
        "other rows random 80/10/10",
        "held_out_items": held_out,
    }
    return RecDataset(
        name=name,
        item_ids=item_ids,
        item_texts=item_texts,
        num_users=num_users,
        train=train,
        valid=valid,
        test=test,
        cold_items=never_in_train(num_items, train),
        meta=meta,
    )
