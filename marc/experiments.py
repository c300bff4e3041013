"""The experiment suite behind EXPERIMENTS.md: does the Mid-layer Representation Advantage hold for the
real SmolLM2 backbone, and what does MARC buy over the usual ways of compressing an LLM state?

One run, per dataset:
  1. MRA sweep - every probed layer's pooled state (full size and PCA to k) scored by the downstream
     CTR harness (`marc.evaluate`); the "mid layer" used below is the best non-final layer by
     validation cold AUC (never a test metric).
  2. Compression table at each k: ids only, final layer full size, final + PCA, final + a trained
     linear compressor, mid + PCA, MARC (mid layer, C + A + beta * KL).
  3. Ablations at one k: MARC + reconstruction, without A, without the information constraint
     (beta = 0), with C and A of the same structure, cut at the final layer; a beta sweep; optionally
     a short LoRA run at the mid and the final layer.

The backbone runs once per dataset over all items (pooled states of every probed layer, cached on
disk by `marc.features`); everything downstream works on those arrays, fanned out over worker
processes (one thread each), so the whole default run fits in about half an hour on 2 CPU cores.
Every vector set is scored by the same harness and seeds; all selection uses validation data only.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import platform
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from marc.data import RecDataset, load_dataset
from marc.evaluate import CTRConfig, evaluate_vectors, pca_vectors, summarise_runs
from marc.probe import probe_layers

log = logging.getLogger(__name__)

SELECT_BY = "valid_auc_cold"
"""Validation metric that picks the mid layer and the served layer (cold items: where text matters)."""

GENERATED_KINDS = ("synthetic", "entities")
"""Dataset specs built by a generator, which take the plan's size options."""


@dataclass(frozen=True)
class Plan:
    """Everything that decides what a run computes (saved in summary.json)."""

    size: str
    """'default' (the EXPERIMENTS.md run) or 'quick' (CI: tiny backbone, tiny data)."""
    backbone: str
    datasets: tuple[str, ...]
    seeds: tuple[int, ...]
    """Seeds of the downstream CTR model and of every trained compressor (the data stay fixed)."""
    dims: tuple[int, ...]
    """k values of the compression table."""
    dim: int
    """k of the layer sweep's PCA, the ablations and the beta sweep."""
    sweep_every: int
    """Probe every n-th layer (the final layer always)."""
    sweep_seeds: tuple[int, ...]
    betas: tuple[float, ...]
    """The beta sweep (the default beta and 0 are added)."""
    recon_weight: float
    """lambda of the '+ reconstruction' ablation."""
    generator_sizes: dict[str, int] = field(default_factory=dict)
    """num_items / num_users / interactions_per_user for the generated datasets (empty = defaults)."""
    ctr: CTRConfig = field(default_factory=CTRConfig)
    train_epochs: int = 20
    train_patience: int = 4
    lora_epochs: int = 0
    """> 0: also train MARC with LoRA for this many epochs at the mid and the final layer (seed 0)."""
    pooling: str = "mean"
    max_length: int = 64
    backbone_batch_size: int = 32
    workers: int = 2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_plan(**overrides: Any) -> Plan:
    """The EXPERIMENTS.md run: real SmolLM2, both generated datasets at their default sizes, 3 seeds."""
    plan = Plan(
        size="default",
        backbone="smollm2",
        datasets=("synthetic", "entities"),
        seeds=(0, 1, 2),
        dims=(16, 32, 64, 128),
        dim=64,
        sweep_every=1,
        sweep_seeds=(0,),
        betas=(1e-2, 1e-1),
        recon_weight=0.1,
        train_epochs=15,
        train_patience=3,
    )
    return replace(plan, **overrides)


def quick_plan(**overrides: Any) -> Plan:
    """CI size: tiny random backbone, a few hundred interactions, one seed; about a minute."""
    plan = Plan(
        size="quick",
        backbone="tiny",
        datasets=("synthetic", "entities"),
        seeds=(0,),
        dims=(8, 16),
        dim=16,
        sweep_every=1,
        sweep_seeds=(0,),
        betas=(1e-2,),
        recon_weight=0.1,
        generator_sizes={"num_items": 120, "num_users": 60, "interactions_per_user": 20},
        ctr=CTRConfig(epochs=2, patience=1, hidden=(16,)),
        train_epochs=2,
        train_patience=1,
        lora_epochs=1,
        max_length=24,
        workers=1,
    )
    return replace(plan, **overrides)


@dataclass(frozen=True)
class Vectors:
    """How one set of item vectors is made from a dataset's pooled states."""

    kind: str
    """'ids' (no vectors), 'full' (the pooled state), 'pca', 'trained' (train_marc, frozen backbone)
    or 'lora' (train_marc with LoRA on the kept layers)."""
    layer: int | None = None
    dim: int | None = None
    overrides: tuple[tuple[str, Any], ...] = ()
    """ModelConfig / TrainConfig fields that differ from MARC's defaults (trained kinds)."""


@dataclass(frozen=True)
class Row:
    """One line of a results table: a label and the vectors it scores."""

    label: str
    vectors: Vectors
    group: str = ""
    """What the row varies in its table (e.g. 'k=64' or 'beta=0.01'); used by the plots."""


def ids_only() -> Vectors:
    return Vectors("ids")


def full_state(layer: int) -> Vectors:
    return Vectors("full", layer)


def pca(layer: int, dim: int) -> Vectors:
    return Vectors("pca", layer, dim)


def marc(layer: int, dim: int, **overrides: Any) -> Vectors:
    """MARC trained on frozen states; ``overrides`` are ModelConfig/TrainConfig fields."""
    return Vectors("trained", layer, dim, tuple(sorted(overrides.items())))


def linear_compressor(layer: int, dim: int) -> Vectors:
    """The usual practice: a linear map trained on the click task, no A, no bottleneck."""
    return marc(layer, dim, use_adapter=False, beta=0.0, recon_weight=0.0)


# ---- the three parts of a run, as table rows --------------------------------------------------------


def sweep_rows(layers: Iterable[int], dim: int) -> list[Row]:
    rows = [Row("ids only", ids_only())]
    for layer in layers:
        rows += [
            Row(f"L{layer} full", full_state(layer), "full"),
            Row(f"L{layer} PCA", pca(layer, dim), "pca"),
        ]
    return rows


def compression_rows(final: int, mid: int, dims: Sequence[int], hidden_size: int) -> list[Row]:
    rows = [Row("ids only", ids_only()), Row(f"final L{final} full ({hidden_size})", full_state(final))]
    for k in dims:
        group = f"k={k}"
        rows += [
            Row(f"final L{final} + PCA", pca(final, k), group),
            Row(f"final L{final} + linear C", linear_compressor(final, k), group),
            Row(f"mid L{mid} + PCA", pca(mid, k), group),
            Row(f"MARC L{mid}", marc(mid, k), group),
        ]
    return rows


def ablation_rows(plan: Plan, final: int, mid: int, default_beta: float, served: int) -> list[Row]:
    """The ablations, plus MARC cut at the served layer and at half depth (the usual default), so
    the choice for the default artifact is checked with MARC itself, not only with PCA."""
    k = plan.dim
    rows = [
        Row(f"MARC L{mid} (C + A + beta*KL, beta={default_beta:g})", marc(mid, k)),
        Row(f"+ reconstruction (lambda={plan.recon_weight:g})", marc(mid, k, recon_weight=plan.recon_weight)),
        Row("without A (dot product of z and the user)", marc(mid, k, use_adapter=False)),
        Row("without the information constraint (beta=0)", marc(mid, k, beta=0.0)),
        Row("C and A of the same structure (A linear, 1 layer)", marc(mid, k, adapter_layers=1)),
        Row(f"cut at the final layer L{final}", marc(final, k)),
    ]
    half = max(1, final // 2)
    for layer, why in ((served, "the served layer"), (half, "half depth")):
        if layer not in (mid, final) and not any(row.vectors == marc(layer, k) for row in rows):
            rows.append(Row(f"cut at {why} L{layer}", marc(layer, k)))
    if plan.lora_epochs > 0:
        epochs = plan.lora_epochs
        rows += [
            Row(f"LoRA ({epochs} epoch) at L{mid}", Vectors("lora", mid, k, (("epochs", epochs),))),
            Row(f"LoRA ({epochs} epoch) at final L{final}", Vectors("lora", final, k, (("epochs", epochs),))),
        ]
    return rows


def beta_rows(plan: Plan, mid: int, default_beta: float) -> list[Row]:
    betas = sorted({0.0, default_beta, *plan.betas})
    return [Row(f"beta={beta:g}", marc(mid, plan.dim, beta=beta), f"{beta:g}") for beta in betas]


# ---- jobs: one (dataset, vectors, seed) each, run in worker processes ------------------------------


@dataclass(frozen=True)
class Job:
    dataset: str
    vectors: Vectors
    seed: int


@dataclass
class RunContext:
    """What every job needs, set once per worker process."""

    plan: Plan
    datasets: dict[str, RecDataset]
    states: dict[str, dict[int, np.ndarray]]


_CONTEXT: RunContext | None = None


def _init_worker(context: RunContext) -> None:
    global _CONTEXT
    _CONTEXT = context
    # The jobs are small models: one intra-op thread per process; the processes use the cores.
    import torch

    torch.set_num_threads(1)


def _split_overrides(overrides: Iterable[tuple[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    from marc.config import ModelConfig, TrainConfig

    model_fields = {f.name for f in fields(ModelConfig)}
    train_fields = {f.name for f in fields(TrainConfig)}
    model, train = {}, {}
    for name, value in overrides:
        if name in model_fields:
            model[name] = value
        elif name in train_fields:
            train[name] = value
        else:
            raise ValueError(f"unknown MARC setting {name!r} in an experiment row")
    return model, train


def _train(plan: Plan, dataset: RecDataset, vectors: Vectors, seed: int, pooled: np.ndarray | None) -> Any:
    """train_marc for a 'trained' (frozen states) or 'lora' job -> TrainResult."""
    from marc.config import ModelConfig, TrainConfig
    from marc.train import train_marc

    model_overrides, train_overrides = _split_overrides(vectors.overrides)
    assert vectors.layer is not None and vectors.dim is not None
    config = ModelConfig(
        backbone=plan.backbone,
        layer=vectors.layer,
        dim=vectors.dim,
        pooling=plan.pooling,  # type: ignore[arg-type]
        max_length=plan.max_length,
        **model_overrides,
    )
    train = TrainConfig(
        **{
            "seed": seed,
            "epochs": plan.train_epochs,
            "patience": plan.train_patience,
            "mode": "lora" if vectors.kind == "lora" else "frozen",
            **train_overrides,
        }
    )
    return train_marc(dataset, config, train, pooled=pooled)


def _train_summary(result: Any) -> dict[str, Any]:
    """What a trained row reports besides the downstream metrics: MARC's own head on test, the
    training length and how many nats z carries (the KL term at the best epoch)."""
    metrics = result.metrics
    best = metrics.get("best_epoch", 0)
    kl = result.history[best - 1]["kl"] if 0 < best <= len(result.history) else None
    keep = ("test_auc", "test_auc_warm", "test_auc_cold", "best_epoch", "epochs_run", "seconds", "z_std")
    return {**{k: metrics.get(k) for k in keep}, "kl_nats": kl}


def run_job(job: Job) -> dict[str, Any]:
    """Make the job's vectors and score them with the downstream harness for the job's seed."""
    context = _CONTEXT
    if context is None:
        raise RuntimeError("run_job called outside a worker (no context set)")
    dataset = context.datasets[job.dataset]
    states = context.states[job.dataset]
    spec = job.vectors
    extra: dict[str, Any] = {}
    vectors: np.ndarray | None
    if spec.kind == "ids":
        vectors = None
    elif spec.kind == "full":
        vectors = states[spec.layer]  # type: ignore[index]
    elif spec.kind == "pca":
        vectors = pca_vectors(states[spec.layer], dataset, spec.dim)  # type: ignore[index,arg-type]
    elif spec.kind == "trained":
        result = _train(context.plan, dataset, spec, job.seed, states[spec.layer])  # type: ignore[index]
        vectors, extra = result.item_vectors(), {"train": _train_summary(result)}
    else:
        raise ValueError(f"unknown vectors kind {spec.kind!r}")
    return {**evaluate_vectors(dataset, vectors, job.seed, context.plan.ctr), **extra}


def _run_lora_job(plan: Plan, dataset: RecDataset, job: Job) -> dict[str, Any]:
    """LoRA jobs run in the main process: each loads its own backbone (training changes it in place)."""
    result = _train(plan, dataset, job.vectors, job.seed, None)
    return {
        **evaluate_vectors(dataset, result.item_vectors(), job.seed, plan.ctr),
        "train": _train_summary(result),
    }


def run_jobs(
    context: RunContext, jobs: Sequence[Job], desc: str, done: dict[Job, dict[str, Any]] | None = None
) -> dict[Job, dict[str, Any]]:
    """Run ``jobs`` (deduplicated) on ``context.plan.workers`` processes; -> result per job. Jobs
    found in ``done`` (results of an earlier identical run) are reused, not run."""
    done = done or {}
    results = {job: done[job] for job in jobs if job in done}
    unique = [job for job in dict.fromkeys(jobs) if job not in results]
    progress = tqdm(total=len(unique), desc=desc, unit="job")
    if context.plan.workers <= 1 or len(unique) <= 1:
        _init_worker(context)
        for job in unique:
            results[job] = run_job(job)
            progress.update()
    else:
        # spawn, not fork: the parent holds torch threads (forking them can deadlock).
        with ProcessPoolExecutor(
            max_workers=context.plan.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(context,),
        ) as pool:
            futures = {pool.submit(run_job, job): job for job in unique}
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                progress.update()
    progress.close()
    return results


# ---- a run --------------------------------------------------------------------------------------------


def _dataset(plan: Plan, spec: str) -> RecDataset:
    kind = spec.partition(":")[0]
    sizes = plan.generator_sizes if kind in GENERATED_KINDS and ":" not in spec else {}
    return load_dataset(spec, seed=0, **sizes)


def _scored(rows: Sequence[Row], runs: dict[Vectors, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Rows -> records with the mean/std of every metric over the row's seeds and its settings."""
    out = []
    for row in rows:
        record = {"label": row.label, "group": row.group, **_describe(row.vectors)}
        record.update(summarise_runs(runs[row.vectors]))
        trained = [run["train"] for run in runs[row.vectors] if "train" in run]
        if trained:
            record["train"] = {
                key: _mean([t[key] for t in trained]) for key in trained[0] if key not in ("seconds",)
            }
        out.append(record)
    return out


def _describe(vectors: Vectors) -> dict[str, Any]:
    return {
        "kind": vectors.kind,
        "layer": vectors.layer,
        "k": vectors.dim,
        "settings": dict(vectors.overrides),
    }


def _mean(values: list[Any]) -> float | None:
    numbers = [float(v) for v in values if v is not None]
    return float(np.mean(numbers)) if numbers else None


def _nan_safe(value: float) -> float:
    return -math.inf if value is None or math.isnan(value) else value


def choose_mid_layer(sweep: list[dict[str, Any]], final: int) -> int:
    """Best non-final layer by validation cold AUC of its PCA-k state (the MARC cut layer)."""
    candidates = [r for r in sweep if r["kind"] == "pca" and r["layer"] != final]
    if not candidates:
        raise ValueError("the sweep has no layer below the final one to cut at")
    return max(candidates, key=lambda r: _nan_safe(r[SELECT_BY]))["layer"]


def choose_served_layer(per_dataset: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The layer the default artifact is cut at: the swept layer with the best validation cold AUC
    (PCA-k), averaged over the datasets. Recorded with its evidence for the manifest."""
    by_layer: dict[int, list[float]] = {}
    for result in per_dataset.values():
        for record in result["sweep"]:
            if record["kind"] == "pca":
                by_layer.setdefault(record["layer"], []).append(_nan_safe(record[SELECT_BY]))
    count = len(per_dataset)
    means = {layer: float(np.mean(v)) for layer, v in by_layer.items() if len(v) == count}
    best = max(means, key=lambda layer: means[layer])
    return {
        "layer": best,
        "rule": f"swept layer with the best mean {SELECT_BY} of its PCA-k state over the datasets",
        "mean_valid_auc_cold_by_layer": {str(layer): round(v, 4) for layer, v in sorted(means.items())},
        "mid_layer_by_dataset": {name: result["mid_layer"] for name, result in per_dataset.items()},
    }


def machine_info() -> dict[str, Any]:
    import torch

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


RESULT_SETTINGS = (
    "backbone",
    "generator_sizes",
    "ctr",
    "train_epochs",
    "train_patience",
    "pooling",
    "max_length",
)
"""Plan fields that change a job's result (the others only choose which jobs run)."""


def previous_results(summary_path: Path, plan: Plan) -> dict[Job, dict[str, Any]]:
    """Per-seed job results of an earlier run's ``summary.json`` that this plan can reuse: every job
    is seeded, so the same job under the same result settings gives the same numbers. Empty when
    the file is missing or was made with other result settings."""
    import json

    path = Path(summary_path)
    if not path.is_file():
        return {}
    summary = json.loads(path.read_text())
    now = json.loads(json.dumps({k: plan.to_dict()[k] for k in RESULT_SETTINGS}))
    before = {k: summary.get("plan", {}).get(k) for k in RESULT_SETTINGS}
    if now != before:
        changed = sorted(k for k in RESULT_SETTINGS if now[k] != before[k])
        log.warning("%s: not reused, made with other settings (%s)", path, ", ".join(changed))
        return {}
    results: dict[Job, dict[str, Any]] = {}
    for name, dataset in summary.get("datasets", {}).items():
        if dataset.get("spec") not in plan.datasets:
            continue
        for table in ("sweep", "compression", "ablations", "beta"):
            for record in dataset.get(table, []):
                settings = tuple(sorted(record["settings"].items()))
                vectors = Vectors(record["kind"], record["layer"], record["k"], settings)
                for run in record["runs"]:
                    results[Job(name, vectors, run["seed"])] = run
    return results


def run_experiments(
    plan: Plan, cache_dir: Path | None = None, previous: dict[Job, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The whole run: pooled states, sweep, compression table, ablations, beta sweep, layer choice.
    ``previous`` (from `previous_results`) are reused instead of recomputed. Returns the summary
    (what summary.json holds)."""
    from marc.backbone import load_backbone
    from marc.config import ModelConfig
    from marc.features import pooled_states

    started = time.perf_counter()
    summary: dict[str, Any] = {"plan": plan.to_dict(), "machine": machine_info(), "datasets": {}}
    timings: dict[str, float] = {}

    tick = time.perf_counter()
    backbone = load_backbone(plan.backbone)
    final = backbone.num_layers
    layers = probe_layers(final, plan.sweep_every)
    timings["backbone_load_seconds"] = time.perf_counter() - tick
    summary["backbone"] = {
        "source": backbone.source,
        "num_layers": final,
        "hidden_size": backbone.hidden_size,
        "swept_layers": layers,
    }

    datasets: dict[str, RecDataset] = {}
    states: dict[str, dict[int, np.ndarray]] = {}
    tick = time.perf_counter()
    for spec in plan.datasets:
        dataset = _dataset(plan, spec)
        if dataset.name in datasets:
            raise ValueError(f"two dataset specs give the same dataset name {dataset.name!r}")
        datasets[dataset.name] = dataset
        log.info(
            "%s: %d items (%d cold), %d users",
            dataset.name,
            dataset.num_items,
            int(dataset.cold_items.sum()),
            dataset.num_users,
        )
        states[dataset.name] = pooled_states(
            backbone,
            dataset.item_texts,
            layers,
            plan.pooling,  # type: ignore[arg-type]
            plan.max_length,
            plan.backbone_batch_size,
            cache_dir,
        )
        summary["datasets"][dataset.name] = {"spec": spec, **_dataset_info(dataset)}
    timings["pooled_states_seconds"] = time.perf_counter() - tick
    del backbone  # LoRA jobs load their own; free the memory for the workers
    context = RunContext(plan, datasets, states)

    # 1. the sweep (it picks each dataset's mid layer, which the other parts need)
    tick = time.perf_counter()
    sweep = sweep_rows(layers, plan.dim)
    sweep_jobs = [
        Job(name, row.vectors, seed) for name in datasets for row in sweep for seed in plan.sweep_seeds
    ]
    sweep_results = run_jobs(context, sweep_jobs, "1/2 layer sweep", previous)
    timings["sweep_seconds"] = time.perf_counter() - tick

    default_beta = ModelConfig().beta
    for name in datasets:
        result = summary["datasets"][name]
        result["sweep"] = _scored(sweep, _collect(sweep_results, name, sweep, plan.sweep_seeds))
        result["mid_layer"] = choose_mid_layer(result["sweep"], final)
    summary["layer_choice"] = {
        **choose_served_layer(summary["datasets"]),
        "backbone": plan.backbone,
        "dim": plan.dim,
        "beta": default_beta,
    }
    served = summary["layer_choice"]["layer"]
    parts: dict[str, dict[str, list[Row]]] = {}
    for name in datasets:
        mid = summary["datasets"][name]["mid_layer"]
        parts[name] = {
            "compression": compression_rows(final, mid, plan.dims, states[name][final].shape[1]),
            "ablations": ablation_rows(plan, final, mid, default_beta, served),
            "beta": beta_rows(plan, mid, default_beta),
        }

    # 2 + 3. everything else, all datasets at once so the workers stay busy
    tick = time.perf_counter()
    jobs = [
        Job(name, row.vectors, seed)
        for name, tables in parts.items()
        for rows in tables.values()
        for row in rows
        if row.vectors.kind != "lora"
        for seed in plan.seeds
    ]
    results = run_jobs(context, jobs, "2/2 compression, ablations, beta", previous)
    timings["tables_seconds"] = time.perf_counter() - tick

    tick = time.perf_counter()
    lora_jobs = [
        Job(name, row.vectors, plan.seeds[0])
        for name, tables in parts.items()
        for row in tables["ablations"]
        if row.vectors.kind == "lora"
    ]
    for job in tqdm(lora_jobs, desc="LoRA runs", unit="run", disable=not lora_jobs):
        reused = (previous or {}).get(job)
        results[job] = reused if reused is not None else _run_lora_job(plan, datasets[job.dataset], job)
    timings["lora_seconds"] = time.perf_counter() - tick

    for name, tables in parts.items():
        for table, rows in tables.items():
            summary["datasets"][name][table] = _scored(rows, _collect(results, name, rows, plan.seeds))

    all_jobs = {**sweep_results, **results}
    reused = sum(1 for job in all_jobs if previous and job in previous)
    summary["jobs"] = {
        "total": len(all_jobs),
        "reused_from_previous_run": reused,
        # CPU-bound seconds of every job's training + evaluation, reused ones included: the work
        # behind the numbers whatever the wall time of this particular (possibly resumed) run.
        "job_seconds": round(sum(_job_seconds(r) for r in all_jobs.values()), 1),
    }
    timings["total_seconds"] = time.perf_counter() - started
    summary["timings"] = {k: round(v, 1) for k, v in timings.items()}
    summary["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return summary


def _job_seconds(result: dict[str, Any]) -> float:
    return float(result.get("seconds") or 0.0) + float((result.get("train") or {}).get("seconds") or 0.0)


def _collect(
    results: dict[Job, dict[str, Any]], dataset: str, rows: Sequence[Row], seeds: Sequence[int]
) -> dict[Vectors, list[dict[str, Any]]]:
    """Per-seed results of each row, in seed order (LoRA rows ran for the first seed only)."""
    runs: dict[Vectors, list[dict[str, Any]]] = {}
    for row in rows:
        row_seeds = seeds[:1] if row.vectors.kind == "lora" else seeds
        runs[row.vectors] = [results[Job(dataset, row.vectors, seed)] for seed in row_seeds]
    return runs


def _dataset_info(dataset: RecDataset) -> dict[str, Any]:
    cold = dataset.cold_items
    return {
        "name": dataset.name,
        "num_items": dataset.num_items,
        "cold_items": int(cold.sum()),
        "num_users": dataset.num_users,
        "interactions": {split: len(getattr(dataset, split)) for split in ("train", "valid", "test")},
        "cold_test_interactions": int(cold[dataset.test.items].sum()),
        "positive_rate_train": round(float(dataset.train.labels.mean()), 4),
    }


def read_layer_choice(summary_path: Path) -> dict[str, Any]:
    """The served-layer choice of an experiments run's ``summary.json``, with the file it came from."""
    import json

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
    import json

    from marc.checkpoint import METRICS_FILE

    entry = {**choice, "layer_used": layer, "follows_evidence": layer == choice["layer"]}
    metrics_path = Path(checkpoint_dir) / METRICS_FILE
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    metrics["layer_choice"] = entry
    metrics_path.write_text(json.dumps(metrics, indent=2, default=str))
    return entry
