"""AUC and LogLoss: one definition for training (`marc.train`) and the downstream harness
(`marc.evaluate`). A metric that a split cannot define - no rows, or for AUC only one class - is NaN:
always a float, so means over seeds and comparisons need no special case, and NaN says "undefined"
wherever it ends up (tables print it as n/a)."""

from __future__ import annotations

import math

import numpy as np
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
