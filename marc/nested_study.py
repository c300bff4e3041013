"""The nested-dimensions study (`marc experiments-nested`): is each prefix z[:d] of a C trained with
nested dimensions as good as a C trained at size d alone, and better than PCA to d?

Per dataset, on the backbone's pooled states at one layer (computed once, cached), for each seed:

* **nested**: one MARC run with ``nested_dims`` = dims; its vectors sliced to each d;
* **separate**: one MARC run per d, at k = d;
* **PCA**: the pooled states projected to their top d components (fitted on train items).

Each vector set is scored by the downstream CTR harness (`marc.evaluate.evaluate_vectors`, as in
EXPERIMENTS.md, with the same seed) on the same test rows; nested vs separate and nested vs PCA are
compared per d on cold GAUC and AUC (cold items: the rows only the vectors can score) with the
paired two-level bootstrap of `marc.stats` over items and seeds, giving the difference's CI,
p-value and verdict. "The price of nesting at full k" is nested vs separate at the largest d, on
GAUC. Writes summary.json, results.md and one plot per dataset.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from marc import json_out
from marc.backbone import load_backbone
from marc.config import ModelConfig, TrainConfig
from marc.data import RecDataset, load_dataset
from marc.evaluate import CTRConfig, evaluate_vectors, pca_vectors
from marc.experiments.plan import GENERATED_KINDS
from marc.features import pooled_states
from marc.predictions import load_predictions
from marc.stats import bootstrap_p, interval, mean_auc_replicates, verdict
from marc.train.loop import train_marc

DOC_BEGIN = "<!-- BEGIN GENERATED: marc experiments-nested -->"
DOC_END = "<!-- END GENERATED: marc experiments-nested -->"
METHODS = ("nested", "separate", "pca")
PART = "cold"
METRICS = ("gauc_cold", "auc_cold")
PRIMARY = "gauc_cold"


@dataclass(frozen=True)
class NestedPlan:
    backbone: str = "smollm2"
    layer: int = 21
    """The served layer (`make artifact`'s DEFAULT_LAYER): the layer the nested artifact is cut at."""
    dims: tuple[int, ...] = (8, 16, 32, 64)
    datasets: tuple[str, ...] = ("synthetic", "movielens100k:data/ml-100k")
    sizes: dict[str, int] = field(default_factory=dict)
    """num_items / num_users of the generated datasets (empty = their defaults)."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """Seeds of MARC training and of the downstream model (the data and its split stay seed 0); the
    intervals resample them (two-level bootstrap over items and seeds)."""
    epochs: int = 15
    patience: int = 3
    ctr_epochs: int = 40
    resamples: int = 1000
    max_length: int = 64
    workers: int = 2
    """Processes, one (dataset, seed) each."""

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
        "seeds": (0, 1),
        "epochs": 3,
        "patience": 2,
        "ctr_epochs": 4,
        "resamples": 200,
        "max_length": 32,
        "workers": 1,
    }
    return NestedPlan(**{**values, **overrides})


def _dataset(plan: NestedPlan, spec: str) -> RecDataset:
    generated = spec.split(":", 1)[0] in GENERATED_KINDS
    return load_dataset(spec, seed=0, **(plan.sizes if generated else {}))


def _marc_vectors(
    plan: NestedPlan, dataset: RecDataset, pooled: np.ndarray, dims: Sequence[int], seed: int
) -> dict[str, Any]:
    """Train MARC at k = dims[-1], nested over ``dims`` when there is more than one."""
    config = ModelConfig(
        backbone=plan.backbone,
        layer=plan.layer,
        max_length=plan.max_length,
        dim=dims[-1],
        nested_dims=list(dims) if len(dims) > 1 else [],
    )
    train = TrainConfig(epochs=plan.epochs, patience=plan.patience, seed=seed)
    result = train_marc(dataset, config, train, pooled=pooled)
    metrics = {
        k: result.metrics.get(k) for k in ("valid_auc", "best_epoch", "epochs_run", "seconds", "nested")
    }
    return {"vectors": result.item_vectors(), "train": metrics}


def _path(folder: Path, method: str, d: int, seed: int) -> Path:
    return folder / f"{method}-d{d}-seed{seed}.npz"


def run_seed(plan: NestedPlan, dataset: RecDataset, pooled: np.ndarray, seed: int, folder: Path) -> dict:
    """One seed of one dataset: the nested C, a separate C per d, PCA per d, each scored by the CTR
    model with this seed (test predictions written to ``folder``). -> what training did."""
    torch.set_num_threads(1)  # small models; the processes use the cores
    dims = list(plan.dims)
    nested = _marc_vectors(plan, dataset, pooled, dims, seed)
    config = CTRConfig(epochs=plan.ctr_epochs)
    separate_train = {}
    for d in dims:
        separate = nested if len(dims) == 1 else _marc_vectors(plan, dataset, pooled, [d], seed)
        separate_train[str(d)] = separate["train"]
        vector_sets = {
            "nested": nested["vectors"][:, :d],
            "separate": separate["vectors"],
            "pca": pca_vectors(pooled, dataset, d),
        }
        for method, vectors in vector_sets.items():
            evaluate_vectors(
                dataset, vectors, seed=seed, config=config, predictions=_path(folder, method, d, seed)
            )
    return {"nested_train": nested["train"], "separate_train": separate_train}


def _interval(estimate: float, replicates: np.ndarray, groups: int) -> dict[str, Any]:
    value = interval(estimate, replicates, groups)
    return {"estimate": value.estimate, "low": value.low, "high": value.high}


def _compare(
    plan: NestedPlan, folder: Path, d: int
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Per method its cold GAUC and AUC with CIs; nested - separate and nested - PCA with paired CIs,
    p-values and verdicts. Two-level bootstrap: items and seeds (the same draws for every method)."""
    methods, comparisons = {}, {}
    replicates: dict[tuple[str, str], tuple[float, np.ndarray]] = {}
    for method in METHODS:
        runs = [load_predictions(_path(folder, method, d, seed)).part(PART) for seed in plan.seeds]
        first = runs[0]
        groups = len(np.unique(first.items))
        for metric in METRICS:
            users = first.users if metric == "gauc_cold" else None
            replicates[method, metric] = mean_auc_replicates(
                first.labels.astype(np.int64),
                [run.scores for run in runs],
                first.items,
                users=users,
                resample_seeds=True,
                resamples=plan.resamples,
            )
        methods[method] = {m: _interval(*replicates[method, m], groups) for m in METRICS}
    for other in ("separate", "pca"):
        comparisons[f"nested_vs_{other}"] = {}
        for metric in METRICS:
            (est_a, rep_a), (est_b, rep_b) = replicates["nested", metric], replicates[other, metric]
            difference = _interval(est_a - est_b, rep_a - rep_b, groups)
            bounds = interval(est_a - est_b, rep_a - rep_b, groups)
            comparisons[f"nested_vs_{other}"][metric] = {
                **difference,
                "p": bootstrap_p(rep_a - rep_b),
                "verdict": verdict(bounds),
            }
    return methods, comparisons


def run_study(plan: NestedPlan, out_dir: Path, cache_dir: Path | None = None) -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    backbone = load_backbone(plan.backbone)
    datasets, pooled, folders = {}, {}, {}
    for spec in plan.datasets:
        dataset = _dataset(plan, spec)
        datasets[spec] = dataset
        pooled[spec] = pooled_states(
            backbone, dataset.item_texts, [plan.layer], "mean", plan.max_length, cache_dir=cache_dir
        )[plan.layer]
        folders[spec] = out_dir / "predictions" / dataset.name
        folders[spec].mkdir(parents=True, exist_ok=True)
    del backbone
    tasks = [(spec, seed) for spec in plan.datasets for seed in plan.seeds]
    trained: dict[tuple[str, int], dict[str, Any]] = {}
    if plan.workers <= 1:
        for spec, seed in tasks:
            trained[spec, seed] = run_seed(plan, datasets[spec], pooled[spec], seed, folders[spec])
    else:  # spawn: the parent holds torch threads
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=plan.workers, mp_context=context) as pool:
            futures = {
                pool.submit(run_seed, plan, datasets[spec], pooled[spec], seed, folders[spec]): (spec, seed)
                for spec, seed in tasks
            }
            for future, task in futures.items():
                trained[task] = future.result()
    results = []
    for spec, dataset in datasets.items():
        rows = []
        for d in plan.dims:
            methods, comparisons = _compare(plan, folders[spec], d)
            rows.append({"d": d, "metrics": methods, **comparisons})
        full = rows[-1]["nested_vs_separate"][PRIMARY]
        results.append(
            {
                "spec": spec,
                "name": dataset.name,
                "num_items": dataset.num_items,
                "cold_items": int(dataset.cold_items.sum()),
                "test_rows": len(dataset.test),
                "trained": {str(seed): trained[spec, seed] for seed in plan.seeds},
                "rows": rows,
                "price_at_full_k": {
                    "d": plan.dims[-1],
                    "difference": full["estimate"],
                    "low": full["low"],
                    "high": full["high"],
                    "verdict": full["verdict"],
                    "within_noise": full["verdict"] != "worse",
                },
            }
        )
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
        f"{plan['layer']}, nested dims {', '.join(map(str, plan['dims']))}, seeds "
        f"{', '.join(map(str, plan['seeds']))} (MARC and the downstream model; one data split). GAUC "
        f"(per-user AUC) and AUC on the test rows of **{summary['part']} items** (the downstream CTR "
        f"model of `marc evaluate`), means over the seeds with 95% paired two-level bootstrap CIs over "
        f"items and seeds ({plan['resamples']} resamples); verdict for nested.",
        "",
    ]
    for result in summary["datasets"]:
        price = result["price_at_full_k"]
        lines += [
            f"**{result['name']}** ({result['num_items']} items, {result['cold_items']} cold; "
            f"{result['test_rows']} test rows)",
            "",
            "| d | nested z[:d] GAUC | separate C at d | PCA to d | nested - separate | verdict "
            "| nested - PCA | verdict | AUC: nested - separate | nested - PCA |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in result["rows"]:
            metrics, versus_separate, versus_pca = (
                row["metrics"],
                row["nested_vs_separate"],
                row["nested_vs_pca"],
            )
            lines.append(
                f"| {row['d']} | {_ci(metrics['nested'][PRIMARY])} | {_ci(metrics['separate'][PRIMARY])} "
                f"| {_ci(metrics['pca'][PRIMARY])} | {_ci(versus_separate[PRIMARY], True)} "
                f"| {versus_separate[PRIMARY]['verdict']} | {_ci(versus_pca[PRIMARY], True)} "
                f"| {versus_pca[PRIMARY]['verdict']} | {_ci(versus_separate['auc_cold'], True)} "
                f"({versus_separate['auc_cold']['verdict']}) | {_ci(versus_pca['auc_cold'], True)} "
                f"({versus_pca['auc_cold']['verdict']}) |"
            )
        lines += [
            "",
            f"Price of nesting at full k = {price['d']}: {price['difference']:+.3f} [{price['low']:+.3f}, "
            f"{price['high']:+.3f}] GAUC, **{price['verdict']}** "
            f"({'within noise' if price['within_noise'] else 'worse than a separate C'}).",
            "",
            f"![nested dimensions, {result['name']}]({plots[result['name']]})",
            "",
        ]
    verdict_text = "within noise on every dataset" if summary["full_k_within_noise"] else "NOT within noise"
    lines.append(f"Full-k quality of the nested C vs a C trained at k alone: **{verdict_text}**.")
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    dims = [row["d"] for row in result["rows"]]
    sources = {
        "nested z[:d]": lambda row: row["metrics"]["nested"][PRIMARY],
        "separate C at d": lambda row: row["metrics"]["separate"][PRIMARY],
        "PCA to d": lambda row: row["metrics"]["pca"][PRIMARY],
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
    ax.set_ylabel(f"test GAUC, {PART} items (95% CI, items and seeds)")
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
