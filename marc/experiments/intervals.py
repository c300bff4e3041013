"""Confidence intervals of a run: every row's test AUC and cold GAUC (mean over its seeds) with a 95%
two-level bootstrap CI over items and seeds, and paired differences between rows with their CI,
bootstrap p-value and verdict, from the per-row test predictions each job wrote (`marc.predictions`,
under ``<out>/predictions``).

Every row of a dataset is scored on the same test rows and resampled with the same item draws and
the same seed draws (`marc.stats.mean_auc_replicates` with ``resample_seeds``), so the replicates
of two rows are paired: a difference's CI is the percentile interval of their replicates'
difference. Its verdict says "better"/"worse" only when that CI excludes 0; the claims then adjust
the p-values of all their comparisons on a dataset together (Holm, `marc.experiments.claims`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from marc.data import RecDataset
from marc.experiments.plan import Vectors
from marc.predictions import Predictions, load_predictions
from marc.stats import LEVEL, Interval, bootstrap_p, interval, mean_auc_replicates, verdict

PARTS = {"auc_cold": ("cold", False), "auc_warm": ("warm", False), "gauc_cold": ("cold", True)}
"""Summary metric -> (the test rows it is computed on, per-user AUC: GAUC)."""

CLAIM_METRIC = "gauc_cold"
"""The metric of every claim's comparisons: on cold items only the vectors tell items apart, and the
per-user AUC leaves out the users' own click rates, which ids alone already predict."""


def _slug(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9=.]+", "-", text).strip("-").lower()


def predictions_path(root: Path, dataset: str, vectors: Vectors, seed: int) -> Path:
    """One file per (dataset, vectors, seed): the same job always writes the same file."""
    settings = "-".join(f"{name}={value}" for name, value in vectors.overrides)
    name = "-".join(
        str(p) for p in (vectors.kind, vectors.layer, vectors.dim, settings) if p not in (None, "")
    )
    return Path(root) / _slug(dataset) / f"{_slug(name)}-seed{seed}.npz"


def record_key(record: dict[str, Any]) -> str:
    """Identifies a table record's vectors within a dataset (kind, layer, k, settings)."""
    return json.dumps([record["kind"], record["layer"], record["k"], record["settings"]], sort_keys=True)


@dataclass
class Evidence:
    """Each row's mean test AUC / GAUC and its bootstrap replicates (paired across rows), per metric."""

    resamples: int
    groups: dict[str, int]
    rows: dict[str, dict[str, tuple[float, np.ndarray]]]
    """record_key -> metric -> (estimate, replicates)."""

    def attach(self, record: dict[str, Any]) -> None:
        """Put the record's CIs in it: ``ci`` = {metric: [low, high]} (None where the test rows are
        too few for one: a label missing from too many replicates)."""
        entry = self.rows[record_key(record)]
        record["ci"] = {
            metric: _bounds(self.groups[metric], estimate, replicates)
            for metric, (estimate, replicates) in entry.items()
        }
        record["ci_level"] = LEVEL

    def compare(self, a: dict[str, Any], b: dict[str, Any], metric: str = CLAIM_METRIC) -> dict[str, Any]:
        """a - b on ``metric`` with the paired CI, the bootstrap p-value and the verdict for a ('n/a'
        without a CI)."""
        est_a, rep_a = self.rows[record_key(a)][metric]
        est_b, rep_b = self.rows[record_key(b)][metric]
        difference = _defined_interval(self.groups[metric], est_a - est_b, rep_a - rep_b)
        return {
            "a": _label(a),
            "b": _label(b),
            "metric": metric,
            "difference": round(est_a - est_b, 4),
            "low": None if difference is None else round(difference.low, 4),
            "high": None if difference is None else round(difference.high, 4),
            "p": None if difference is None else round(bootstrap_p(rep_a - rep_b), 4),
            "verdict": "n/a" if difference is None else verdict(difference),
        }


def _label(record: dict[str, Any]) -> str:
    """The row's label, with its k where the label alone does not say it."""
    return (
        f"{record['label']} (k={record['k']})"
        if record["k"] and record["group"].startswith("k=")
        else record["label"]
    )


def _defined_interval(groups: int, estimate: float, replicates: np.ndarray) -> Interval | None:
    try:
        return interval(estimate, replicates, groups)
    except ValueError:  # too few rows of one label for a defined AUC in most replicates
        return None


def _bounds(groups: int, estimate: float, replicates: np.ndarray) -> list[float] | None:
    value = _defined_interval(groups, estimate, replicates)
    return None if value is None else [round(value.low, 4), round(value.high, 4)]


def collect_evidence(
    dataset: RecDataset,
    records: list[dict[str, Any]],
    predictions_dir: Path,
    resamples: int,
) -> Evidence:
    """Evidence for every record (deduplicated by vectors) of one dataset from its runs' predictions."""
    rows: dict[str, dict[str, tuple[float, np.ndarray]]] = {}
    groups: dict[str, int] = {}
    reference: Predictions | None = None
    for record in records:
        key = record_key(record)
        if key in rows:
            continue
        runs = [load_predictions(Path(predictions_dir) / run["predictions"]) for run in record["runs"]]
        entry = {}
        for run in runs:
            reference = reference or run
            reference.check_paired(run)
        for metric, (part, per_user) in PARTS.items():
            parts = [run.part(part) for run in runs]
            first = parts[0]
            groups[metric] = len(np.unique(first.items))
            entry[metric] = mean_auc_replicates(
                first.labels.astype(np.int64),
                [p.scores for p in parts],
                first.items,
                users=first.users if per_user else None,
                resample_seeds=True,
                resamples=resamples,
            )
        rows[key] = entry
    if reference is not None and len(reference) != len(dataset.test):
        raise ValueError(
            f"{dataset.name}: predictions have {len(reference)} rows, the test split {len(dataset.test)}"
        )
    return Evidence(resamples, groups, rows)
