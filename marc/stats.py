"""Statistics that tell a win from noise when models are scored on the same test rows.

* `bootstrap_auc`: AUC with a percentile bootstrap CI (default 95%). The resampling unit is a
  *group* of rows (items or users), not a row: rows of one item share that item's difficulty, so a
  row bootstrap would understate the noise of a test set with few items.
* `paired_aucs`: both AUCs and AUC(a) - AUC(b) of two models scored on the same rows, with each
  bootstrap replicate resampling the same groups for both models (paired), so the shared
  difficulty of the rows cancels out.
* `mean_auc_replicates` + `interval`: the same for the mean AUC (or GAUC: per-user AUC) over several
  seeds of each model (replicates of two models on the same rows are paired; their difference gives
  the CI), optionally resampling the seeds too (a two-level bootstrap over items and seeds).
* `holm`: Holm's step-down adjustment of p-values (`bootstrap_p`) for a family of comparisons.
* `verdict`: "better" / "worse" / "no difference" from the paired difference's CI.
* `sample_std`: standard deviation with ddof=1 (the spread over seeds).

Each replicate is computed as a weighted AUC (each row weighted by how often its group was drawn),
so nothing is copied and the scores are sorted once per model.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from marc.predictions import Predictions

LEVEL = 0.95
RESAMPLES = 2000
_CHUNK_CELLS = 4_000_000  # replicates x rows per weight matrix (32 MB of float64)
VERDICTS = ("better", "worse", "no difference")


@dataclass(frozen=True)
class Interval:
    """A point estimate with its bootstrap confidence interval."""

    estimate: float
    low: float
    high: float
    level: float
    resamples: int
    """Replicates in which the statistic was defined (both labels present)."""
    groups: int
    """Number of resampled groups (items or users)."""

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check(labels: np.ndarray, *scores: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be a 1-d array of 0/1")
    for s in scores:
        if np.shape(s) != labels.shape:
            raise ValueError(f"scores must have one value per label ({len(labels)}), got {np.shape(s)}")
    return labels.astype(bool)


def _weighted_aucs(positive: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUC per row of `weights` [replicates, rows]: the weighted share of (positive, negative) pairs
    ranked correctly, ties counting one half. NaN where a replicate lacks positives or negatives."""
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    ties = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    w = weights[:, order]
    pos = np.add.reduceat(w * positive[order], ties, axis=1)
    neg = np.add.reduceat(w * ~positive[order], ties, axis=1)
    below = np.cumsum(neg, axis=1) - neg
    pairs = pos.sum(1) * neg.sum(1)
    correct = (pos * (below + 0.5 * neg)).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, correct / pairs, np.nan)


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC (ties count one half); NaN when only one label is present."""
    positive = _check(labels, scores)
    return float(_weighted_aucs(positive, np.asarray(scores, np.float64), np.ones((1, len(positive))))[0])


def _group_weights(groups: np.ndarray, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Chunks of row weights [replicates, rows]: each replicate draws as many groups as there are,
    with replacement, and weights each row by how often its group was drawn."""
    _, codes = np.unique(groups, return_inverse=True)
    count = int(codes.max()) + 1
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_CELLS // max(1, len(codes)))
    for start in range(0, resamples, chunk):
        draws = rng.multinomial(count, np.full(count, 1.0 / count), size=min(chunk, resamples - start))
        yield draws[:, codes].astype(np.float64)


def _interval(estimate: float, replicates: np.ndarray, level: float, groups: int) -> Interval:
    defined = replicates[np.isfinite(replicates)]
    if len(defined) < 0.9 * len(replicates):  # the rest would be a biased, conditional interval
        raise ValueError(
            f"the statistic is undefined in {len(replicates) - len(defined)} of {len(replicates)} "
            "bootstrap replicates (too few rows of one label): no interval"
        )
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(defined, [tail, 100 - tail])
    return Interval(float(estimate), float(low), float(high), level, len(defined), groups)


def _replicates(
    positive: np.ndarray, score_sets: Sequence[np.ndarray], groups: np.ndarray, resamples: int, seed: int
) -> list[np.ndarray]:
    """Bootstrap AUCs of each score set, all on the same resampled groups."""
    if len(groups) != len(positive):
        raise ValueError(f"groups must have one value per label ({len(positive)}), got {len(groups)}")
    out: list[list[np.ndarray]] = [[] for _ in score_sets]
    for weights in _group_weights(np.asarray(groups), resamples, seed):
        for k, scores in enumerate(score_sets):
            out[k].append(_weighted_aucs(positive, scores, weights))
    return [np.concatenate(parts) for parts in out]


def bootstrap_auc(
    labels: np.ndarray,
    scores: np.ndarray,
    groups: np.ndarray,
    *,
    resamples: int = RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
) -> Interval:
    """AUC with a percentile bootstrap CI over `groups` (e.g. the item or user of each row)."""
    positive = _check(labels, scores)
    scores = np.asarray(scores, np.float64)
    (replicates,) = _replicates(positive, [scores], groups, resamples, seed)
    return _interval(auc(labels, scores), replicates, level, len(np.unique(groups)))


def paired_aucs(
    labels: np.ndarray,
    scores_a: np.ndarray,
    scores_b: np.ndarray,
    groups: np.ndarray,
    *,
    resamples: int = RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
) -> tuple[Interval, Interval, Interval]:
    """(AUC of a, AUC of b, AUC(a) - AUC(b)) on the same rows, each with its percentile bootstrap CI;
    every replicate resamples the same `groups` for both models (paired)."""
    positive = _check(labels, scores_a, scores_b)
    a, b = np.asarray(scores_a, np.float64), np.asarray(scores_b, np.float64)
    replicates_a, replicates_b = _replicates(positive, [a, b], groups, resamples, seed)
    count = len(np.unique(groups))
    auc_a, auc_b = auc(labels, a), auc(labels, b)
    return (
        _interval(auc_a, replicates_a, level, count),
        _interval(auc_b, replicates_b, level, count),
        _interval(auc_a - auc_b, replicates_a - replicates_b, level, count),
    )


def _weighted_gaucs(
    positive: np.ndarray, scores: np.ndarray, users: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    """GAUC per row of `weights` [replicates, rows] (`marc.ctr_metrics.gauc` with each row counted
    as often as its group was drawn): per user the weighted AUC, averaged over the users defined in
    the replicate, weighted by their drawn rows. NaN where no user has both labels."""
    total = np.zeros(len(weights))
    mass = np.zeros(len(weights))
    _, codes = np.unique(users, return_inverse=True)
    order = np.argsort(codes, kind="stable")
    bounds = np.flatnonzero(np.r_[True, codes[order][1:] != codes[order][:-1], True])
    for start, end in itertools.pairwise(bounds):
        rows = order[start:end]
        if positive[rows].all() or not positive[rows].any():
            continue  # never defined, whatever is drawn
        values = _weighted_aucs(positive[rows], scores[rows], weights[:, rows])
        defined = np.isfinite(values)
        drawn = weights[:, rows].sum(1) * defined
        total += np.where(defined, values, 0.0) * drawn
        mass += drawn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(mass > 0, total / mass, np.nan)


def _point(positive: np.ndarray, scores: np.ndarray, users: np.ndarray | None) -> float:
    ones = np.ones((1, len(positive)))
    if users is None:
        return float(_weighted_aucs(positive, scores, ones)[0])
    return float(_weighted_gaucs(positive, scores, users, ones)[0])


def seed_draws(seeds: int, resamples: int, seed: int = 0) -> np.ndarray:
    """int [resamples, seeds]: which of a row's seed runs each replicate averages (drawn with
    replacement). They depend only on the arguments, so rows with as many seeds share the draws
    (paired, like the group draws)."""
    return np.random.default_rng([seed, seeds]).integers(0, seeds, size=(resamples, seeds))


def mean_auc_replicates(
    labels: np.ndarray,
    score_sets: Sequence[np.ndarray],
    groups: np.ndarray,
    *,
    users: np.ndarray | None = None,
    resample_seeds: bool = False,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> tuple[float, np.ndarray]:
    """The mean AUC of several score sets on the same rows (e.g. one model trained with several seeds)
    and its bootstrap replicates over `groups`. The groups drawn depend only on (groups, resamples,
    seed), so replicates of different models on the same rows are paired: subtract them for the CI
    of a difference (`interval`). ``users``: GAUC (per-user AUC, row-weighted) instead of AUC.
    ``resample_seeds``: a two-level bootstrap - each replicate also draws the score sets (seeds) with
    replacement (`seed_draws`), so the interval holds the seeds' noise as well as the items'."""
    if not score_sets:
        raise ValueError("no score sets given")
    positive = _check(labels, *score_sets)
    sets = [np.asarray(s, np.float64) for s in score_sets]
    if users is not None and np.shape(users) != positive.shape:
        raise ValueError(f"users must have one value per label ({len(positive)}), got {np.shape(users)}")
    if len(groups) != len(positive):
        raise ValueError(f"groups must have one value per label ({len(positive)}), got {len(groups)}")
    out: list[list[np.ndarray]] = [[] for _ in sets]
    for weights in _group_weights(np.asarray(groups), resamples, seed):
        for k, scores in enumerate(sets):
            if users is None:
                out[k].append(_weighted_aucs(positive, scores, weights))
            else:
                out[k].append(_weighted_gaucs(positive, scores, np.asarray(users), weights))
    replicates = np.stack([np.concatenate(parts) for parts in out])  # [seeds, resamples]
    estimate = float(np.mean([_point(positive, s, users) for s in sets]))
    if resample_seeds and len(sets) > 1:
        draws = seed_draws(len(sets), replicates.shape[1], seed)
        return estimate, replicates[draws, np.arange(replicates.shape[1])[:, None]].mean(1)
    return estimate, replicates.mean(0)


def interval(estimate: float, replicates: np.ndarray, groups: int, level: float = LEVEL) -> Interval:
    """The percentile CI of `replicates` around `estimate` (e.g. of `mean_auc_replicates`, or of the
    difference of two models' paired replicates)."""
    return _interval(estimate, replicates, level, groups)


def verdict(difference: Interval) -> str:
    """'better' if the CI of a - b lies above 0, 'worse' if below, else 'no difference'."""
    if difference.low > 0:
        return "better"
    if difference.high < 0:
        return "worse"
    return "no difference"


def bootstrap_p(replicates: np.ndarray) -> float:
    """Two-sided bootstrap p-value of "the difference is 0" from a difference's replicates: twice the
    smaller share of replicates on either side of 0 (with the +1 of a Monte Carlo p, never 0). Below
    1 - LEVEL exactly when the percentile CI at LEVEL excludes 0 (up to that +1)."""
    defined = replicates[np.isfinite(replicates)]
    if len(defined) == 0:
        return math.nan
    tail = min(int((defined <= 0).sum()), int((defined >= 0).sum()))
    return min(1.0, 2 * (tail + 1) / (len(defined) + 1))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values of a family of tests (NaN stays NaN and is not counted):
    rejecting where the adjusted p < alpha keeps the chance of any false "better"/"worse" in the
    family below alpha."""
    values = np.asarray(pvalues, dtype=np.float64)
    defined = np.flatnonzero(np.isfinite(values))
    adjusted = np.full(len(values), math.nan)
    running = 0.0
    for rank, index in enumerate(defined[np.argsort(values[defined], kind="stable")]):
        running = max(running, min(1.0, (len(defined) - rank) * values[index]))
        adjusted[index] = running
    return adjusted.tolist()


def sample_std(values: Sequence[float] | np.ndarray) -> float:
    """Standard deviation with ddof=1; NaN for fewer than two values (no spread to estimate)."""
    values = np.asarray(values, dtype=np.float64)
    return float(values.std(ddof=1)) if len(values) > 1 else math.nan


def compare_predictions(
    a: Predictions,
    b: Predictions,
    *,
    part: str = "cold",
    by: str = "item",
    resamples: int = RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
) -> dict[str, Any]:
    """Model a against model b on the same rows (`part` 'all'/'cold'/'warm', resampling by 'item' or
    'user'): each AUC and the paired difference with their CIs, and the verdict for a."""
    if by not in ("item", "user"):
        raise ValueError(f"by must be 'item' or 'user', got {by!r}")
    a.check_paired(b)
    a, b = a.part(part), b.part(part)
    groups = a.items if by == "item" else a.users
    options = {"resamples": resamples, "seed": seed, "level": level}
    auc_a, auc_b, difference = paired_aucs(a.labels, a.scores, b.scores, groups, **options)
    return {
        "part": part,
        "by": by,
        "rows": len(a),
        "auc_a": auc_a.to_dict(),
        "auc_b": auc_b.to_dict(),
        "difference": difference.to_dict(),
        "verdict": verdict(difference),
    }
