"""The layer probe (the Mid-layer Representation Advantage sweep): score the pooled state of each
probed layer, compressed to k by PCA (and optionally at full size), with the downstream harness,
and pick the layer to cut the backbone at."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from marc.backbone import Backbone, Pooling
from marc.data import RecDataset
from marc.evaluate import CTRConfig, evaluate_seeds, pca_vectors
from marc.features import pooled_states

log = logging.getLogger(__name__)

SELECTION_METRICS: tuple[str, ...] = ("valid_auc_cold", "valid_auc")
"""Validation metrics a layer may be chosen by (never a test metric: no selection on test)."""


def probe_layers(num_layers: int, every: int = 1, layers: Sequence[int] | None = None) -> list[int]:
    """The layers to probe: ``layers`` if given, else every ``every``-th layer; the final layer is
    always included (it is the usual practice the sweep compares against)."""
    if layers:
        bad = [layer for layer in layers if not 1 <= layer <= num_layers]
        if bad:
            raise ValueError(f"--layers {bad} out of range: this backbone has layers 1..{num_layers}")
        chosen = set(layers)
    else:
        if every < 1:
            raise ValueError(f"--every must be >= 1, got {every}")
        chosen = set(range(every, num_layers + 1, every))
    return sorted(chosen | {num_layers})


def run_probe(
    dataset: RecDataset,
    backbone: Backbone,
    dim: int,
    layers: Sequence[int],
    *,
    seeds: Sequence[int] = (0,),
    pooling: Pooling = "mean",
    max_length: int = 64,
    full_size: bool = False,
    select_by: str = "valid_auc_cold",
    cache_dir: Path | None = None,
    ctr: CTRConfig | None = None,
) -> dict[str, Any]:
    """Score each layer; returns the report (settings, ids-only reference, one record per layer,
    the best layer by ``select_by`` on validation and, for reference only, by test cold AUC)."""
    if select_by not in SELECTION_METRICS:
        raise ValueError(f"select_by must be one of {SELECTION_METRICS}, got {select_by!r}")
    started = time.perf_counter()
    states = pooled_states(
        backbone, dataset.item_texts, list(layers), pooling, max_length, cache_dir=cache_dir
    )
    states_seconds = time.perf_counter() - started

    started = time.perf_counter()
    ids_only = evaluate_seeds(dataset, None, seeds, ctr)
    records = []
    for layer in layers:
        record: dict[str, Any] = {
            "layer": layer,
            "pca": evaluate_seeds(dataset, pca_vectors(states[layer], dataset, dim), seeds, ctr),
        }
        if full_size:
            record["full"] = evaluate_seeds(dataset, states[layer], seeds, ctr)
        log.info(
            "layer %d: PCA-%d cold AUC %.4f (valid %.4f), warm AUC %.4f",
            layer,
            dim,
            record["pca"]["auc_cold"],
            record["pca"]["valid_auc_cold"],
            record["pca"]["auc_warm"],
        )
        records.append(record)
    evaluation_seconds = time.perf_counter() - started

    best = max(records, key=lambda r: r["pca"][select_by])
    best_test = max(records, key=lambda r: r["pca"]["auc_cold"])
    return {
        "backbone": backbone.source,
        "num_layers": backbone.num_layers,
        "hidden_size": backbone.hidden_size,
        "final_layer": backbone.num_layers,
        "dim": dim,
        "pooling": pooling,
        "max_length": max_length,
        "dataset": dataset.name,
        "num_items": dataset.num_items,
        "seeds": list(seeds),
        "ctr_model": vars(ctr or CTRConfig()),
        "select_by": select_by,
        "best_layer": best["layer"],
        "best_layer_by_test_cold_auc": best_test["layer"],
        "ids_only": ids_only,
        "records": records,
        "timings": {
            "pooled_states_seconds": round(states_seconds, 2),
            "evaluation_seconds": round(evaluation_seconds, 2),
            "evaluation_seconds_per_vector_set": round(
                evaluation_seconds / (1 + len(records) * (2 if full_size else 1)), 2
            ),
        },
    }


def plot_probe(report: dict[str, Any], path: Path) -> Path:
    """AUC vs layer: cold and warm test AUC of the PCA-k states (and full size when probed), the
    ids-only cold AUC for reference, the final layer and the chosen layer marked."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    records = report["records"]
    layers = [r["layer"] for r in records]
    fig, ax = plt.subplots(figsize=(8, 4.8))
    series = [("pca", "auc_cold", f"PCA-{report['dim']}, cold items", "-o", "tab:blue")]
    series.append(("pca", "auc_warm", f"PCA-{report['dim']}, warm items", "--o", "tab:orange"))
    if all("full" in r for r in records):
        series.append(("full", "auc_cold", "full size, cold items", ":s", "tab:green"))
        series.append(("full", "auc_warm", "full size, warm items", ":s", "tab:olive"))
    for variant, metric, label, style, color in series:
        values = [r[variant][metric] for r in records]
        # seed std; undefined (NaN) for a single seed: no bar
        errors = [float(np.nan_to_num(r[variant][f"{metric}_std"])) for r in records]
        ax.errorbar(
            layers,
            values,
            yerr=errors if any(errors) else None,
            fmt=style,
            color=color,
            label=label,
            capsize=3,
        )
    ax.axhline(
        report["ids_only"]["auc_cold"],
        color="grey",
        linewidth=1,
        linestyle="-.",
        label="ids only, cold items",
    )
    ax.axvline(report["final_layer"], color="black", linewidth=1, linestyle=":")
    ax.annotate(
        "final layer",
        (report["final_layer"], 0.02),
        xycoords=("data", "axes fraction"),
        ha="right",
        rotation=90,
    )
    best = next(r for r in records if r["layer"] == report["best_layer"])
    ax.plot(
        best["layer"],
        best["pca"]["auc_cold"],
        marker="*",
        markersize=18,
        color="red",
        linestyle="none",
        label=f"best: layer {best['layer']} (by {report['select_by']})",
    )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(f"layer (of {report['num_layers']})")
    ax.set_ylabel("test AUC")
    ax.set_title(f"Layer probe: {report['backbone']} on {report['dataset']}, k={report['dim']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_probe(report: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """``probe.json`` (the full report) and ``probe.png`` (the plot) under ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "probe.json"
    json_path.write_text(json.dumps(report, indent=2))
    return json_path, plot_probe(report, out_dir / "probe.png")
