"""AUC, GAUC and LogLoss: one definition for training (`marc.train`) and the downstream harness
(`marc.evaluate`). A metric that a split cannot define - no rows, or for AUC only one class - is NaN:
always a float, so means over seeds and comparisons need no special case, and NaN says "undefined"
wherever it ends up (tables print it as n/a)."""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import log_loss as _sklearn_log_loss
from sklearn.metrics import roc_auc_score

PROBABILITY_CLIP = 1e-7
"""Probabilities are clipped to [1e-7, 1 - 1e-7] before the log: one confident mistake costs at most
-log(1e-7) = 16.1 nats instead of infinity."""


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC of ``scores`` (logits or probabilities: any monotone score) against 0/1 ``labels``;
    NaN unless both classes occur."""
    labels = np.asarray(labels)
    if not 0 < labels.sum() < len(labels):
        return math.nan
    return float(roc_auc_score(labels, scores))


def gauc(labels: np.ndarray, scores: np.ndarray, users: np.ndarray) -> float:
    """Group AUC: each user's AUC over their own rows, averaged over the users whose rows hold both
    classes, weighted by their number of rows (the usual GAUC of CTR papers, e.g. DIN). A global AUC
    also rewards telling users apart (who clicks more); GAUC only ranks items within a user, so on
    cold items it measures what the item vectors carry. NaN when no user has both classes."""
    labels = np.asarray(labels).astype(bool)
    if len(labels) == 0:
        return math.nan
    _, codes = np.unique(np.asarray(users), return_inverse=True)
    # Ranks within each user in one sort: the key orders by user, then score (ties share a rank).
    dense = rankdata(np.asarray(scores, dtype=np.float64), method="dense")
    ranks = rankdata(codes * (dense.max() + 1.0) + dense, method="average")
    sizes = np.bincount(codes)
    ranks -= (np.cumsum(sizes) - sizes)[codes]  # 1-based rank among the user's own rows
    positives = np.bincount(codes, weights=labels, minlength=len(sizes))
    negatives = sizes - positives
    rank_sums = np.bincount(codes, weights=np.where(labels, ranks, 0.0), minlength=len(sizes))
    both = (positives > 0) & (negatives > 0)
    if not both.any():
        return math.nan
    per_user = (rank_sums[both] - positives[both] * (positives[both] + 1) / 2) / (
        positives[both] * negatives[both]
    )
    return float(np.average(per_user, weights=sizes[both]))


def log_loss(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean binary cross-entropy of click ``probabilities`` against 0/1 ``labels``; NaN on no rows."""
    if len(labels) == 0:
        return math.nan
    clipped = np.clip(np.asarray(probabilities, dtype=np.float64), PROBABILITY_CLIP, 1 - PROBABILITY_CLIP)
    return float(_sklearn_log_loss(labels, clipped, labels=[0.0, 1.0]))


def probabilities(logits: np.ndarray) -> np.ndarray:
    """Click probabilities of logits (the logistic function, in float64)."""
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))


def format_metric(value: float | None) -> str:
    """Four decimals, or "n/a" for a metric that is missing (None) or undefined (NaN)."""
    return "n/a" if value is None or math.isnan(value) else f"{value:.4f}"
