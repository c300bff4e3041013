"""The layer choices, by validation data only: each dataset's mid layer (where MARC cuts) and the layer
the default artifact is served at; and carrying that choice into a checkpoint as evidence."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from marc.checkpoint import METRICS_FILE

SELECT_BY = "valid_auc_cold"
"""Validation metric that picks the mid layer and the served layer (cold items: where text matters)."""

SELECT_KIND = "pca_std"
"""Sweep rows the choice reads: PCA-k of the per-channel standardised state (what C sees)."""


def nan_safe(value: float | None) -> float:
    """An undefined metric (None, NaN) ranks below every defined one."""
    return -math.inf if value is None or math.isnan(value) else value


def choose_mid_layer(sweep: list[dict[str, Any]], final: int) -> int:
    """Best non-final layer by validation cold AUC of its standardised PCA-k state (the MARC cut layer)."""
    candidates = [r for r in sweep if r["kind"] == SELECT_KIND and r["layer"] != final]
    if not candidates:
        raise ValueError("the sweep has no layer below the final one to cut at")
    return max(candidates, key=lambda r: nan_safe(r[SELECT_BY]))["layer"]


def choose_served_layer(per_dataset: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The layer the default artifact is cut at: the swept layer with the best validation cold AUC
    (standardised PCA-k, mean over the sweep seeds), averaged over the datasets. Recorded with its
    evidence for the manifest."""
    by_layer: dict[int, list[float]] = {}
    for result in per_dataset.values():
        for record in result["sweep"]:
            if record["kind"] == SELECT_KIND:
                by_layer.setdefault(record["layer"], []).append(nan_safe(record[SELECT_BY]))
    count = len(per_dataset)
    means = {layer: float(np.mean(v)) for layer, v in by_layer.items() if len(v) == count}
    best = max(means, key=lambda layer: means[layer])
    return {
        "layer": best,
        "rule": f"swept layer with the best mean {SELECT_BY} of its standardised PCA-k state over the "
        "datasets",
        "mean_valid_auc_cold_by_layer": {str(layer): round(v, 4) for layer, v in sorted(means.items())},
        "mid_layer_by_dataset": {name: result["mid_layer"] for name, result in per_dataset.items()},
    }


def read_layer_choice(summary_path: Path) -> dict[str, Any]:
    """The served-layer choice of an experiments run's ``summary.json``, with the file it came from."""
    summary_path = Path(summary_path)
    try:
        choice = json.loads(summary_path.read_text())["layer_choice"]
        layer = int(choice["layer"])
    except FileNotFoundError:
        raise FileNotFoundError(f"{summary_path}: not found (run `make experiments` to write it)") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise ValueError(
            f"{summary_path}: not a `marc experiments` summary (no 'layer_choice.layer')"
        ) from None
    return {**choice, "layer": layer, "evidence": str(summary_path)}


def record_layer_choice(checkpoint_dir: Path, choice: dict[str, Any], layer: int) -> dict[str, Any]:
    """Write ``choice`` (from `read_layer_choice`) into a checkpoint's metrics as ``layer_choice``
    (export copies the metrics into the artifact manifest), noting the layer the checkpoint really
    uses. -> the entry written."""
    entry = {**choice, "layer_used": layer, "follows_evidence": layer == choice["layer"]}
    metrics_path = Path(checkpoint_dir) / METRICS_FILE
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    metrics["layer_choice"] = entry
    metrics_path.write_text(json.dumps(metrics, indent=2, default=str))
    return entry
