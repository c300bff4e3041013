"""Bootstrap CIs, paired differences and verdicts on constructed cases with known answers; the
per-row predictions file."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from marc.ctr_metrics import gauc
from marc.data import DataError, load_dataset
from marc.evaluate import evaluate_vectors
from marc.predictions import Predictions, load_predictions, predictions_for, save_predictions
from marc.stats import (
    Interval,
    _weighted_aucs,
    _weighted_gaucs,
    auc,
    bootstrap_auc,
    bootstrap_p,
    compare_predictions,
    holm,
    interval,
    mean_auc_replicates,
    paired_aucs,
    sample_std,
    verdict,
)


def clustered(items: int = 150, rows_per_item: int = 20, signal: float = 1.0, seed: int = 0):
    """Rows grouped by item: each item has its own score offset (shared difficulty) and click rate."""
    rng = np.random.default_rng(seed)
    item = np.repeat(np.arange(items), rows_per_item)
    labels = (rng.random(len(item)) < rng.uniform(0.2, 0.8, items)[item]).astype(float)
    offset = rng.normal(0, 1.0, items)[item]
    scores = signal * labels + offset + rng.normal(0, 1.0, len(item))
    return item, labels, scores


def test_auc_matches_sklearn_with_ties_and_integer_weights_match_repeated_rows() -> None:
    rng = np.random.default_rng(1)
    labels = (rng.random(500) < 0.4).astype(float)
    scores = np.round(labels + rng.normal(size=500), 1)  # many ties
    assert auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    counts = rng.integers(0, 4, size=(3, 500))
    got = _weighted_aucs(labels.astype(bool), scores, counts.astype(float))
    for k in range(3):
        repeated = np.repeat(np.arange(500), counts[k])
        assert got[k] == pytest.approx(roc_auc_score(labels[repeated], scores[repeated]), abs=1e-12)
    assert math.isnan(auc(np.ones(5), np.arange(5.0)))
    with pytest.raises(ValueError, match="0/1"):
        auc(np.array([0, 2]), np.array([0.1, 0.2]))


def test_identical_models_differ_by_exactly_zero() -> None:
    item, labels, scores = clustered()
    difference = paired_aucs(labels, scores, scores.copy(), item, resamples=300)[2]
    assert difference.estimate == difference.low == difference.high == 0.0
    assert difference.contains(0.0) and verdict(difference) == "no difference"


def test_clearly_better_model_excludes_zero_and_the_verdict_follows_the_sign() -> None:
    item, labels, weak = clustered(signal=0.3)
    strong = weak + 1.0 * labels  # the same rows, a much stronger signal
    better = paired_aucs(labels, strong, weak, item, resamples=500)[2]
    assert better.low > 0 and verdict(better) == "better"
    worse = paired_aucs(labels, weak, strong, item, resamples=500)[2]
    assert worse.high < 0 and verdict(worse) == "worse"
    assert worse.estimate == pytest.approx(-better.estimate)


def test_equally_good_models_are_no_difference() -> None:
    item, labels, _ = clustered()
    rng = np.random.default_rng(5)
    a = labels + rng.normal(0, 1.5, len(labels))  # two independent models of the same quality
    b = labels + rng.normal(0, 1.5, len(labels))
    assert verdict(paired_aucs(labels, a, b, item, resamples=500)[2]) == "no difference"


def test_seeded_bootstrap_is_reproducible_and_the_seed_matters() -> None:
    item, labels, scores = clustered()
    first = bootstrap_auc(labels, scores, item, resamples=400, seed=7)
    assert first == bootstrap_auc(labels, scores, item, resamples=400, seed=7)
    other = bootstrap_auc(labels, scores, item, resamples=400, seed=8)
    assert other.estimate == first.estimate and (other.low, other.high) != (first.low, first.high)
    assert first.low < first.estimate < first.high and first.groups == 150 and first.resamples == 400


def test_resampling_items_widens_the_interval_when_rows_share_item_difficulty() -> None:
    item, labels, scores = clustered(items=60, rows_per_item=50)
    by_item = bootstrap_auc(labels, scores, item, resamples=1000)
    by_row = bootstrap_auc(labels, scores, np.arange(len(labels)), resamples=1000)
    assert by_item.high - by_item.low > 1.3 * (by_row.high - by_row.low)


def test_95_percent_intervals_cover_the_true_auc_about_95_percent_of_the_time() -> None:
    # Scores N(signal * label, 1) for iid rows: the population AUC is Phi(signal / sqrt(2)).
    signal, truth = 0.8, float(norm.cdf(0.8 / np.sqrt(2)))
    rng = np.random.default_rng(11)
    covered = 0
    trials = 200
    for trial in range(trials):
        labels = (rng.random(400) < 0.5).astype(float)
        scores = signal * labels + rng.normal(size=400)
        groups = np.arange(400) // 4  # 100 groups of 4 iid rows
        covered += bootstrap_auc(labels, scores, groups, resamples=300, seed=trial).contains(truth)
    assert 0.89 <= covered / trials <= 0.99


def test_undefined_auc_in_most_replicates_is_an_error() -> None:
    labels = np.array([1.0] + [0.0] * 9)
    with pytest.raises(ValueError, match="undefined in"):
        bootstrap_auc(labels, np.arange(10.0), np.arange(10), resamples=200)


def test_sample_std_uses_ddof_1() -> None:
    assert sample_std([1.0, 2.0, 3.0, 4.0]) == pytest.approx(np.std([1, 2, 3, 4], ddof=1))
    assert sample_std([0.70, 0.72]) == pytest.approx(0.0141421356)
    assert math.isnan(sample_std([0.7]))


# ---------------------------------------------------------------- predictions files


def _predictions(n: int = 50, seed: int = 0) -> Predictions:
    rng = np.random.default_rng(seed)
    return Predictions(
        rows=np.arange(n),
        users=rng.integers(0, 10, n),
        items=rng.integers(0, 20, n),
        labels=(rng.random(n) < 0.5).astype(np.float32),
        scores=rng.random(n),
        cold=rng.random(n) < 0.5,
        meta={"model": "test", "seed": seed},
    )


def test_predictions_round_trip(tmp_path: Path) -> None:
    original = _predictions()
    path = save_predictions(tmp_path / "sub" / "a.preds", original)
    assert path.name == "a.preds"  # the name is kept as given
    back = load_predictions(path)
    for name in ("rows", "users", "items", "labels", "scores", "cold"):
        assert np.array_equal(getattr(back, name), getattr(original, name)), name
    assert back.meta == {"model": "test", "seed": 0} and back.scores.dtype == np.float64
    assert len(back.part("cold")) + len(back.part("warm")) == len(back)


@pytest.mark.parametrize(
    ("arrays", "expected"),
    [
        ({"score": None}, "missing field 'score'"),
        ({"label": np.full(50, 2.0)}, "field 'label' must hold only 0 and 1"),
        ({"score": np.full(50, np.nan)}, "field 'score' holds NaN"),
        ({"user": np.zeros(49, dtype=np.int64)}, "fields have different lengths"),
        ({"item": np.zeros(50, dtype=np.float64)}, "field 'item' must be a 1-d int64 array"),
    ],
)
def test_bad_predictions_files_name_the_field(tmp_path: Path, arrays: dict, expected: str) -> None:
    good = _predictions()
    columns = {
        "row": good.rows,
        "user": good.users,
        "item": good.items,
        "label": good.labels,
        "score": good.scores,
        "cold": good.cold,
    }
    columns.update(arrays)
    path = tmp_path / "bad.npz"
    np.savez(path, **{k: v for k, v in columns.items() if v is not None})
    with pytest.raises(DataError) as error:
        load_predictions(path)
    assert expected in str(error.value) and "bad.npz" in str(error.value)


def test_not_a_predictions_file(tmp_path: Path) -> None:
    (tmp_path / "x.npz").write_text("hello")
    with pytest.raises(DataError, match=r"not a predictions \.npz file"):
        load_predictions(tmp_path / "x.npz")
    with pytest.raises(DataError, match="missing predictions file"):
        load_predictions(tmp_path / "y.npz")


def test_comparing_unpaired_predictions_is_refused() -> None:
    a, b = _predictions(seed=0), _predictions(seed=1)
    with pytest.raises(ValueError, match="field 'users' differs"):
        compare_predictions(a, b)


def test_evaluate_vectors_writes_predictions_that_reproduce_its_aucs(tmp_path: Path) -> None:
    dataset = load_dataset("synthetic", num_items=120, num_users=60, interactions_per_user=20)
    rng = np.random.default_rng(0)
    runs = {}
    for name, vectors in (("ids", None), ("random", rng.normal(size=(120, 8)))):
        runs[name] = evaluate_vectors(dataset, vectors, seed=0, predictions=tmp_path / f"{name}.npz")
    ids, random = load_predictions(tmp_path / "ids.npz"), load_predictions(tmp_path / "random.npz")
    assert len(ids) == len(dataset.test) and np.array_equal(ids.labels, dataset.test.labels)
    assert ids.meta == {"dataset": "synthetic", "seed": 0, "dim": 0}
    assert roc_auc_score(ids.labels, ids.scores) == pytest.approx(runs["ids"]["auc_all"], abs=1e-6)
    cold = random.part("cold")
    assert roc_auc_score(cold.labels, cold.scores) == pytest.approx(runs["random"]["auc_cold"], abs=1e-6)
    result = compare_predictions(random, ids, part="cold", by="user", resamples=200)
    assert result["auc_a"]["estimate"] == pytest.approx(runs["random"]["auc_cold"], abs=1e-6)
    assert result["difference"]["estimate"] == pytest.approx(
        runs["random"]["auc_cold"] - runs["ids"]["auc_cold"], abs=1e-6
    )
    assert result["verdict"] == verdict(Interval(**result["difference"]))
    assert predictions_for(dataset.test, np.zeros(len(dataset.test)), dataset.cold_items).cold.sum() == len(
        dataset.cold(dataset.test)
    )


def test_bootstrap_gauc_matches_the_metric_and_integer_weights_match_repeated_rows() -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 300).astype(bool)
    scores = rng.normal(size=300) + labels
    users = rng.integers(0, 25, 300)
    weights = rng.integers(0, 3, (1, 300)).astype(np.float64)
    assert _weighted_gaucs(labels, scores, users, np.ones((1, 300)))[0] == pytest.approx(
        gauc(labels, scores, users)
    )
    repeated = np.repeat(np.arange(300), weights[0].astype(int))
    assert _weighted_gaucs(labels, scores, users, weights)[0] == pytest.approx(
        gauc(labels[repeated], scores[repeated], users[repeated])
    )


def test_resampling_seeds_widens_the_interval_by_the_seeds_spread() -> None:
    items, labels, _ = clustered(items=200, signal=1.0)
    rng = np.random.default_rng(5)
    base = labels + rng.normal(size=len(labels))
    # Three seeds of one model that differ a lot (a seed-sensitive model), and a steady rival.
    seeds = [base + shift * labels for shift in (-0.6, 0.0, 0.6)]
    steady = [base] * 3
    options = {"resamples": 400}
    est, items_only = mean_auc_replicates(labels, seeds, items, **options)
    est2, both = mean_auc_replicates(labels, seeds, items, resample_seeds=True, **options)
    _, rival = mean_auc_replicates(labels, steady, items, resample_seeds=True, **options)
    assert est == est2
    assert np.std(both) > 1.5 * np.std(items_only)
    narrow, wide = interval(est, items_only - rival, 200), interval(est, both - rival, 200)
    assert wide.high - wide.low > narrow.high - narrow.low
    # The same seed draws for every row with as many seeds: a row against itself differs by 0.
    _, again = mean_auc_replicates(labels, seeds, items, resample_seeds=True, **options)
    assert np.array_equal(both, again)


def test_holm_adjusts_in_step_down_order_and_bootstrap_p_follows_the_interval() -> None:
    assert holm([0.01, 0.04, 0.03, math.nan, 0.005]) == pytest.approx(
        [0.03, 0.06, 0.06, math.nan, 0.02], nan_ok=True
    )
    assert holm([0.5]) == [0.5]
    above = np.linspace(0.001, 0.05, 999)
    assert bootstrap_p(above) == pytest.approx(2 / 1000)
    straddling = np.linspace(-0.05, 0.05, 1000)
    assert bootstrap_p(straddling) == 1.0
