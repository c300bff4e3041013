"""AUC and LogLoss (`marc.ctr_metrics`): values against their definitions, NaN for what a split cannot
define, and training and the downstream harness giving the same NaN on a split without rows."""

from __future__ import annotations

import math

import numpy as np
import pytest

from marc.config import ModelConfig, TrainConfig
from marc.ctr_metrics import PROBABILITY_CLIP, auc, format_metric, gauc, log_loss, probabilities
from marc.data import make_synthetic
from marc.evaluate import CTRConfig, evaluate_vectors
from marc.train.loop import train_marc


def test_auc_and_log_loss_match_their_definitions() -> None:
    labels = np.array([0.0, 0.0, 1.0, 1.0, 1.0])
    probs = np.array([0.1, 0.6, 0.4, 0.8, 0.9])
    # 6 (positive, negative) pairs; only 0.4 < 0.6 is ordered wrongly.
    assert auc(labels, probs) == pytest.approx(5 / 6)
    assert log_loss(labels, probs) == pytest.approx(
        -np.mean(labels * np.log(probs) + (1 - labels) * np.log(1 - probs))
    )
    logits = np.log(probs / (1 - probs))
    np.testing.assert_allclose(probabilities(logits), probs)
    assert auc(labels, logits) == auc(labels, probs)  # any monotone score


def test_a_confident_mistake_costs_a_bounded_loss() -> None:
    assert log_loss(np.array([1.0]), np.array([0.0])) == pytest.approx(-math.log(PROBABILITY_CLIP))


@pytest.mark.parametrize(
    "labels", [[], [1.0, 1.0, 1.0], [0.0, 0.0]], ids=["no rows", "positives", "negatives"]
)
def test_auc_is_nan_unless_both_classes_occur(labels: list[float]) -> None:
    assert math.isnan(auc(np.array(labels), np.linspace(0, 1, len(labels))))


def test_log_loss_is_nan_only_without_rows() -> None:
    assert math.isnan(log_loss(np.array([]), np.array([])))
    assert math.isfinite(log_loss(np.array([1.0, 1.0]), np.array([0.7, 0.9])))


def test_undefined_metrics_print_as_not_available() -> None:
    assert [format_metric(v) for v in (None, math.nan, 0.71234)] == ["n/a", "n/a", "0.7123"]


def test_training_and_evaluation_agree_on_a_split_without_rows() -> None:
    dataset = make_synthetic(num_items=120, num_users=80, interactions_per_user=30, cold_fraction=0.0)
    assert not dataset.cold_items.any(), "the fixture needs a dataset without cold items"
    pooled = np.random.default_rng(0).normal(size=(dataset.num_items, 8)).astype(np.float32)
    config = ModelConfig(backbone="tiny", layer=2, dim=4)
    trained = train_marc(dataset, config, TrainConfig(epochs=1), pooled=pooled).metrics
    scored = evaluate_vectors(dataset, pooled, config=CTRConfig(epochs=1))
    undefined = [trained["valid_auc_cold"], trained["valid_logloss_cold"], trained["test_auc_cold"]]
    undefined += [scored["auc_cold"], scored["logloss_cold"], scored["valid_auc_cold"]]
    assert all(math.isnan(value) for value in undefined)
    assert all(math.isfinite(v) for v in (trained["valid_auc"], trained["valid_logloss"], scored["auc_all"]))


def test_gauc_is_the_row_weighted_mean_of_each_users_own_auc() -> None:
    labels = np.array([1, 0, 0, 1, 1, 0, 1, 1])
    scores = np.array([0.9, 0.1, 0.5, 0.2, 0.8, 0.3, 0.4, 0.6])
    users = np.array([0, 0, 0, 1, 1, 1, 2, 2])  # user 2: one class only, left out
    user0 = auc(labels[:3], scores[:3])  # 1.0
    user1 = auc(labels[3:6], scores[3:6])  # 0.5
    assert gauc(labels, scores, users) == pytest.approx((3 * user0 + 3 * user1) / 6)
    # A score that only says which user clicks more: perfect global AUC, chance GAUC.
    by_user = np.array([0.1, 0.1, 0.1, 0.2, 0.2, 0.2, 0.3, 0.3])
    assert gauc(labels, by_user, users) == 0.5
    assert math.isnan(gauc(labels[6:], scores[6:], users[6:]))
