"""The nested-dimensions study (`marc experiments-nested`): is each prefix z[:d] of a C trained with
nested dimensions as good as a C trained at size d alone, and better than PCA to d?

Per dataset, on the backbone's pooled states at one layer (computed once, cached):

* **nested**: one MARC run with ``nested_dims`` = dims; its vectors sliced to each d;
* **separate**: one MARC run per d, at k = d;
* **PCA**: the pooled states projected to their top d components (fitted on train items).

Each vector set is scored by the downstream CTR harness (`marc.evaluate.evaluate_vectors`, as in
EXPERIMENTS.md) on the same test rows; nested vs separate and nested vs PCA are compared per d with
the paired item bootstrap of `marc.stats` (cold items: the rows only the vectors can score), giving
the difference's CI and a verdict. "The price of nesting at full k" is nested vs separate at the
largest d. Writes summary.json, results.md and one plot per dataset.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from marc import json_out
from marc.backbone import load_backbone
from marc.config import ModelConfig, TrainConfig
from marc.data import RecDataset, load_dataset
from marc.evaluate import CTRConfig, evaluate_vectors, pca_vectors
from marc.experiments.plan import GENERATED_KINDS
from marc.features import pooled_states
from marc.predictions import load_predictions
from marc.stats import compare_predictions
from marc.train.loop import train_marc

DOC_BEGIN = "<!-- BEGIN GENERATED: marc experiments-nested -->"
DOC_END = "<!-- END GENERATED: marc experiments-nested -->"
METHODS = ("nested", "separate", "pca")
PART = "cold"


@dataclass(frozen=True)
class NestedPlan:
    backbone: str = "smollm2"
    layer: int = 8
    dims: tuple[int, ...] = (8, 16, 32, 64)
    datasets: tuple[str, ...] = ("synthetic", "movielens100k:data/ml-100k")
    sizes: dict[str, int] = field(default_factory=dict)
    """num_items / num_users of the generated datasets (empty = their defaults)."""
    seed: int = 0
    """Seed of MARC training, of the downstream model and of the bootstrap."""
    epochs: int = 15
    patience: int = 3
    ctr_epochs: int = 40
    resamples: int = 1000
    max_length: int = 64

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def quick_plan(**overrides: Any) -> NestedPlan:
    """CI size: the tiny random backbone, a small synthetic dataset, short training."""
    values: dict[str, Any] = {
        "backbone": "tiny",
        "layer": 2,
        "dims": (4, 8, 16),
        "datasets": ("synthetic",),
        "sizes": {"num_items": 240, "num_users": 120},
        "epochs": 3,
        "patience": 2,
        "ctr_epochs": 4,
        "resamples": 200,
        "max_length": 32,
    }
    return NestedPlan(**{**values, **overrides})


def _dataset(plan: NestedPlan, spec: str) -> RecDataset:
    generated = spec.split(":", 1)[0] in GENERATED_KINDS
    return load_dataset(spec, seed=plan.seed, **(plan.sizes if generated else {}))


def _marc_vectors(
    plan: NestedPlan, dataset: RecDataset, pooled: np.ndarray, dims: Sequence[int]
) -> dict[str, Any]:
    """Train MARC at k = dims[-1], nested over ``dims`` when there is more than one."""
    config = ModelConfig(
        backbone=plan.backbone,
        layer=plan.layer,
        max_length=plan.max_length,
        dim=dims[-1],
        nested_dims=list(dims) if len(dims) > 1 else [],
    )
    train = TrainConfig(epochs=plan.epochs, patience=plan.patience, seed=plan.seed)
    result = train_marc(dataset, config, train, pooled=pooled)
    metrics = {
        k: result.metrics.get(k) for k in ("valid_auc", "best_epoch", "epochs_run", "seconds", "nested")
    }
    return {"vectors": result.item_vectors(), "train": metrics}


def _scored(plan: NestedPlan, dataset: RecDataset, vectors: np.ndarray, path: Path) -> dict[str, Any]:
    """Downstream CTR metrics of ``vectors``; per-row test predictions written to ``path``."""
    config = CTRConfig(epochs=plan.ctr_epochs)
    return evaluate_vectors(dataset, vectors, seed=plan.seed, config=config, predictions=path)


def run_dataset(plan: NestedPlan, spec: str, out_dir: Path, cache_dir: Path | None) -> dict[str, Any]:
    started = time.perf_counter()
    dataset = _dataset(plan, spec)
    backbone = load_backbone(plan.backbone)
    pooled = pooled_states(
        backbone, dataset.item_texts, [plan.layer], "mean", plan.max_length, cache_dir=cache_dir
    )[plan.layer]
    predictions = out_dir / "predictions" / dataset.name
    predictions.mkdir(parents=True, exist_ok=True)
    dims = list(plan.dims)
    nested = _marc_vectors(plan, dataset, pooled, dims)
    rows = []
    for d in dims:
        separate = nested if (d == dims[-1] and len(dims) == 1) else _marc_vectors(plan, dataset, pooled, [d])
        vector_sets = {
            "nested": nested["vectors"][:, :d],
            "separate": separate["vectors"],
            "pca": pca_vectors(pooled, dataset, d, seed=plan.seed),
        }
        metrics = {
            method: _scored(plan, dataset, vectors, predictions / f"{method}-d{d}.npz")
            for method, vectors in vector_sets.items()
        }
        loaded = {method: load_predictions(predictions / f"{method}-d{d}.npz") for method in METHODS}
        options = {"part": PART, "by": "item", "resamples": plan.resamples, "seed": plan.seed}
        rows.append(
            {
                "d": d,
                "metrics": {
                    m: {k: metrics[m][k] for k in ("auc_all", "auc_warm", "auc_cold")} for m in METHODS
                },
                "nested_vs_separate": compare_predictions(loaded["nested"], loaded["separate"], **options),
                "nested_vs_pca": compare_predictions(loaded["nested"], loaded["pca"], **options),
                "separate_train": separate["train"],
            }
        )
    full = rows[-1]["nested_vs_separate"]
    return {
        "spec": spec,
        "name": dataset.name,
        "num_items": dataset.num_items,
        "cold_items": int(dataset.cold_items.sum()),
        "test_rows": len(dataset.test),
        "nested_train": nested["train"],
        "rows": rows,
        "price_at_full_k": {
            "d": dims[-1],
            "difference": full["difference"],
            "verdict": full["verdict"],
            "within_noise": full["verdict"] != "worse",
        },
        "seconds": round(time.perf_counter() - started, 1),
    }


def run_study(plan: NestedPlan, out_dir: Path, cache_dir: Path | None = None) -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results = [run_dataset(plan, spec, out_dir, cache_dir) for spec in plan.datasets]
    return {
        "plan": plan.to_dict(),
        "part": PART,
        "datasets": results,
        "full_k_within_noise": all(r["price_at_full_k"]["within_noise"] for r in results),
        "seconds": round(time.perf_counter() - started, 1),
    }


def _ci(interval: dict[str, Any], signed: bool = False) -> str:
    sign = "+" if signed else ""
    return f"{interval['estimate']:{sign}.3f} [{interval['low']:{sign}.3f}, {interval['high']:{sign}.3f}]"


def markdown(summary: dict[str, Any], plots: dict[str, str], command: str) -> str:
    plan = summary["plan"]
    lines = [
        f"Command: `{command}` ({summary['seconds'] / 60:.1f} min). Backbone {plan['backbone']} cut at layer "
        f"{plan['layer']}, nested dims {', '.join(map(str, plan['dims']))}, seed {plan['seed']}. AUC on the "
        f"test rows of **{summary['part']} items** (the downstream CTR model of `marc evaluate`), 95% "
        f"paired bootstrap CIs over items ({plan['resamples']} resamples); verdict for nested.",
        "",
    ]
    for result in summary["datasets"]:
        price = result["price_at_full_k"]
        lines += [
            f"**{result['name']}** ({result['num_items']} items, {result['cold_items']} cold; "
            f"{result['test_rows']} test rows)",
            "",
            "| d | nested z[:d] | separate C at d | PCA to d | nested - separate | verdict "
            "| nested - PCA | verdict |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in result["rows"]:
            versus_separate, versus_pca = row["nested_vs_separate"], row["nested_vs_pca"]
            lines.append(
                f"| {row['d']} | {_ci(versus_separate['auc_a'])} | {_ci(versus_separate['auc_b'])} "
                f"| {_ci(versus_pca['auc_b'])} | {_ci(versus_separate['difference'], True)} "
                f"| {versus_separate['verdict']} | {_ci(versus_pca['difference'], True)} "
                f"| {versus_pca['verdict']} |"
            )
        lines += [
            "",
            f"Price of nesting at full k = {price['d']}: {_ci(price['difference'], True)} AUC, "
            f"**{price['verdict']}** "
            f"({'within noise' if price['within_noise'] else 'worse than a separate C'}).",
            "",
            f"![nested dimensions, {result['name']}]({plots[result['name']]})",
            "",
        ]
    verdict = "within noise on every dataset" if summary["full_k_within_noise"] else "NOT within noise"
    lines.append(f"Full-k quality of the nested C vs a C trained at k alone: **{verdict}**.")
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    dims = [row["d"] for row in result["rows"]]
    sources = {
        "nested z[:d]": lambda row: row["nested_vs_separate"]["auc_a"],
        "separate C at d": lambda row: row["nested_vs_separate"]["auc_b"],
        "PCA to d": lambda row: row["nested_vs_pca"]["auc_b"],
    }
    for offset, (label, pick) in zip((-0.04, 0.0, 0.04), sources.items(), strict=True):
        intervals = [pick(row) for row in result["rows"]]
        estimates = np.array([i["estimate"] for i in intervals])
        errors = np.array(
            [
                [e - i["low"] for e, i in zip(estimates, intervals, strict=True)],
                [i["high"] - e for e, i in zip(estimates, intervals, strict=True)],
            ]
        )
        ax.errorbar(
            [d * (1 + offset) for d in dims], estimates, yerr=errors, marker="o", capsize=3, label=label
        )
    ax.set_xscale("log", base=2)
    ax.set_xticks(dims, [str(d) for d in dims])
    ax.set_xlabel("vector size d")
    ax.set_ylabel(f"test AUC, {PART} items (95% CI)")
    ax.set_title(f"nested dimensions: {result['name']}")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_outputs(summary: dict[str, Any], out_dir: Path, command: str) -> dict[str, Path]:
    plots = {r["name"]: plot(r, out_dir / f"nested-{r['name']}.png") for r in summary["datasets"]}
    (out_dir / "summary.json").write_text(json_out.dumps(summary, indent=2))
    relative = {name: path.name for name, path in plots.items()}
    (out_dir / "results.md").write_text(markdown(summary, relative, command))
    return {"summary": out_dir / "summary.json", "results": out_dir / "results.md", **plots}


def update_doc(doc: Path, summary: dict[str, Any], out_dir: Path, command: str) -> None:
    """Replace the generated block between `DOC_BEGIN` and `DOC_END` in ``doc`` (plots linked from the
    doc's folder)."""
    text = doc.read_text()
    if DOC_BEGIN not in text or DOC_END not in text:
        raise ValueError(f"{doc}: no '{DOC_BEGIN}' ... '{DOC_END}' block to fill")
    try:
        folder = out_dir.resolve().relative_to(doc.resolve().parent)
    except ValueError:
        folder = out_dir.resolve()
    plots = {r["name"]: f"{folder.as_posix()}/nested-{r['name']}.png" for r in summary["datasets"]}
    head, rest = text.split(DOC_BEGIN, 1)
    _, tail = rest.split(DOC_END, 1)
    doc.write_text(f"{head}{DOC_BEGIN}\n{markdown(summary, plots, command)}{DOC_END}{tail}")


def with_overrides(plan: NestedPlan, **overrides: Any) -> NestedPlan:
    return replace(plan, **{k: v for k, v in overrides.items() if v is not None})
