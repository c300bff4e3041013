"""Jobs: one (dataset, vectors, seed) each - make the vectors (PCA, or train MARC on frozen states) and
score them with the downstream harness, writing the per-row test predictions (`marc.predictions`) that
the confidence intervals are computed from - fanned out over worker processes."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from marc import json_out
from marc.baselines import surface_vectors
from marc.config import ModelConfig, TrainConfig
from marc.content_baselines import genre_year_vectors, random_vectors, tfidf_vectors
from marc.data import RecDataset
from marc.evaluate import evaluate_vectors, pca_vectors
from marc.experiments.intervals import predictions_path
from marc.experiments.plan import Plan, Vectors
from marc.train.loop import TrainResult, train_marc


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
    predictions_dir: Path | None = None
    """Where each job writes its per-row test predictions and its result (None: not written)."""
    specs: dict[str, str] | None = None
    """Dataset name -> the spec it was loaded from (recorded with each job's result)."""
    cache_dir: Path | None = None
    """Cache of backbone states (LoRA jobs read their token states there)."""


_CONTEXT: RunContext | None = None


def _init_worker(context: RunContext) -> None:
    global _CONTEXT
    _CONTEXT = context
    # The jobs are small models: one intra-op thread per process; the processes use the cores.
    torch.set_num_threads(1)


def _split_overrides(overrides: Iterable[tuple[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
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


def _train(
    plan: Plan,
    dataset: RecDataset,
    vectors: Vectors,
    seed: int,
    pooled: np.ndarray | None,
    cache_dir: Path | None = None,
) -> TrainResult:
    """train_marc for a 'trained' (frozen states) or 'lora' job -> TrainResult."""
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
    settings: dict[str, Any] = {
        "seed": seed,
        "epochs": plan.train_epochs,
        "patience": plan.train_patience,
        "batch_size": plan.train_batch_size,
        "mode": "frozen",
    }
    if vectors.kind == "lora":
        settings.update(
            mode="lora",
            batch_size=plan.lora_batch_size,
            item_batches=True,
            lora_lr=plan.lora_lr,
            # After the warm start: small steps for C, A kept as it is (item batches would tune the
            # user embeddings of a few items' users), and the best LoRA epoch reported even when
            # the warm start scored higher, so the row measures what LoRA did.
            lora_module_lr=plan.lora_lr,
            lora_head=False,
            lora_keep_start=False,
            warm_start_epochs=plan.train_epochs,
            warm_start_batch_size=plan.train_batch_size,
        )
    train = TrainConfig(**{**settings, **train_overrides})
    return train_marc(dataset, config, train, pooled=pooled, cache_dir=cache_dir)


def _train_summary(result: TrainResult) -> dict[str, Any]:
    """What a trained row reports besides the downstream metrics: MARC's own head on test, the
    training length and how many nats z carries (the KL term at the best epoch)."""
    metrics = result.metrics
    best = metrics.get("best_epoch", 0)
    kl = result.history[best - 1]["kl"] if 0 < best <= len(result.history) else None
    keep = ("test_auc", "test_auc_warm", "test_auc_cold", "test_gauc_cold", "valid_gauc_cold")
    keep += ("best_epoch", "epochs_run", "seconds", "z_std", "steps_per_epoch")
    keep += ("epoch_seconds", "epoch_train_seconds", "lora_layers", "setup_seconds")
    out = {**{k: metrics[k] for k in keep if k in metrics}, "kl_nats": kl}
    if "warm_start" in metrics:  # LoRA: where the LoRA epochs start from, and each epoch's validation
        out["warm_start_valid_auc"] = metrics["warm_start"]["valid_auc"]
        out["warm_start_epochs_run"] = metrics["warm_start"]["epochs_run"]
        for epoch, record in enumerate(result.history, 1):
            out[f"valid_auc_epoch{epoch}"] = record["auc"]
    return out


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
    elif spec.kind == "surface":
        vectors = surface_vectors(dataset.item_texts)
    elif spec.kind == "genre_year":
        vectors = genre_year_vectors(dataset)
    elif spec.kind == "tfidf":
        vectors = tfidf_vectors(dataset, spec.dim)  # type: ignore[arg-type]
    elif spec.kind == "random":  # a new draw per seed: the control's own noise is in its interval
        vectors = random_vectors(dataset.num_items, spec.dim, job.seed)  # type: ignore[arg-type]
    elif spec.kind == "full":
        vectors = states[spec.layer]  # type: ignore[index]
    elif spec.kind == "pca":
        vectors = pca_vectors(states[spec.layer], dataset, spec.dim)  # type: ignore[index,arg-type]
    elif spec.kind == "pca_std":
        standardised = channel_standardised(states[spec.layer])  # type: ignore[index]
        vectors = pca_vectors(standardised, dataset, spec.dim)  # type: ignore[arg-type]
    elif spec.kind == "trained":
        result = _train(context.plan, dataset, spec, job.seed, states[spec.layer])  # type: ignore[index]
        vectors, extra = result.item_vectors(), {"train": _train_summary(result)}
    elif spec.kind == "lora":  # loads its own backbone: training changes it in place
        result = _train(context.plan, dataset, spec, job.seed, None, context.cache_dir)
        vectors, extra = result.item_vectors(), {"train": _train_summary(result)}
    else:
        raise ValueError(f"unknown vectors kind {spec.kind!r}")
    result = {**_evaluate(context, dataset, job, vectors), **extra}
    save_job(context, job, result)
    return result


def channel_standardised(states: np.ndarray) -> np.ndarray:
    """Each channel to zero mean and unit standard deviation over all items, exactly as C's input
    standardisation does (`marc.modules.Compressor.set_input_stats`: unsupervised, every item)."""
    states = states.astype(np.float64)
    scale = np.maximum(states.std(0, ddof=1), 1e-6)
    return ((states - states.mean(0)) / scale).astype(np.float32)


def _evaluate(
    context: RunContext, dataset: RecDataset, job: Job, vectors: np.ndarray | None
) -> dict[str, Any]:
    """Score the vectors; with a predictions folder, write the per-row test predictions and, beside
    them, the job and its result (what `--resume` reuses after an interrupted run)."""
    root = context.predictions_dir
    path = None if root is None else predictions_path(root, job.dataset, job.vectors, job.seed)
    result = evaluate_vectors(dataset, vectors, job.seed, context.plan.ctr, predictions=path)
    return result if path is None or root is None else {**result, "predictions": str(path.relative_to(root))}


def save_job(context: RunContext, job: Job, result: dict[str, Any]) -> None:
    """The job's result as JSON beside its predictions file, with the settings that produced it."""
    if context.predictions_dir is None:
        return
    path = predictions_path(context.predictions_dir, job.dataset, job.vectors, job.seed).with_suffix(".json")
    record = {
        "dataset": job.dataset,
        "spec": (context.specs or {}).get(job.dataset),
        "kind": job.vectors.kind,
        "layer": job.vectors.layer,
        "k": job.vectors.dim,
        "settings": dict(job.vectors.overrides),
        "seed": job.seed,
        "result_settings": context.plan.result_settings(),
        "result": result,
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json_out.dumps(record))
    tmp.replace(path)


def run_jobs(
    context: RunContext, jobs: Sequence[Job], desc: str, done: dict[Job, dict[str, Any]] | None = None
) -> dict[Job, dict[str, Any]]:
    """Run ``jobs`` (deduplicated) on ``context.plan.workers`` processes; -> result per job. Jobs
    found in ``done`` (results of an earlier identical run) are reused, not run."""
    done = done or {}
    results = {job: done[job] for job in jobs if job in done}
    # LoRA jobs first: they are the longest, so the workers end together; by seed, so the two
    # workers start on different layers and each computes one layer's token states (then cached).
    unique = sorted(
        (job for job in dict.fromkeys(jobs) if job not in results),
        key=lambda job: (job.vectors.kind != "lora", job.seed if job.vectors.kind == "lora" else 0),
    )
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
