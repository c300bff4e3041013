"""One whole run; returns the summary (what summary.json holds). Per dataset:
  1. MRA sweep - every probed layer's pooled state, standardised per channel (as C sees it) and PCA
     to k, scored by the downstream CTR harness (`marc.evaluate`) on every seed; the "mid layer" used
     below is the best non-final layer by validation cold AUC (never a test metric).
  2. Compression table at each k: ids only, the text's surface form, genre multi-hot + year
     (MovieLens), TF-IDF + SVD to k, random vectors at k (control), the final layer at full size,
     final + PCA (raw and standardised), final + C + A, mid + PCA (standardised), MARC (mid layer,
     C + A + beta * KL).
  3. Ablations at one k (the plan's list), MARC cut at the final/served/half-depth layer; a beta
     sweep; on the focus datasets (MovieLens-100K KAR by default) MARC with LoRA on the top m layers
     at the served and the final layer, the cheap fixes of MARC against PCA of the served layer, and
     replicates of a trimmed table on other data splits.
  4. Every row's test cold GAUC and AUC with a 95% two-level bootstrap CI over items and seeds, and
     the claims as paired differences with their CIs, Holm-adjusted p-values and verdicts
     (`marc.experiments.intervals`, `marc.experiments.claims`, from the jobs' per-row predictions);
     optionally the measured cost of full-depth LoRA (`marc.train.cost`).

The backbone runs once per dataset over all items (pooled states of every probed layer, cached on
disk by `marc.features`); everything downstream works on those arrays, fanned out over worker
processes (one thread each), aiming the default run at 45 minutes on 2 CPU cores.
Every vector set is scored by the same harness and seeds; all selection uses validation data only.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from marc.backbone import load_backbone
from marc.config import ModelConfig, TrainConfig
from marc.data import RecDataset, load_dataset
from marc.evaluate import summarise_runs
from marc.experiments.choice import choose_mid_layer, choose_served_layer
from marc.experiments.claims import claims, replicate_claims
from marc.experiments.intervals import collect_evidence
from marc.experiments.jobs import Job, RunContext, run_jobs
from marc.experiments.plan import (
    GENERATED_KINDS,
    Plan,
    Row,
    Vectors,
    ablation_rows,
    beta_rows,
    compression_rows,
    fix_rows,
    replicate_rows,
    sweep_rows,
)
from marc.experiments.report import slug
from marc.features import pooled_states
from marc.machine import load_average, machine_info
from marc.probe import probe_layers
from marc.train.cost import measure_lora_cost

log = logging.getLogger(__name__)


def _dataset(plan: Plan, spec: str) -> RecDataset:
    kind = spec.partition(":")[0]
    sizes = plan.generator_sizes if kind in GENERATED_KINDS and ":" not in spec else {}
    return load_dataset(spec, seed=0, **sizes)


def _splits(plan: Plan, spec: str, focus: bool) -> tuple[int, ...]:
    """The other data splits a dataset is replicated on: focus datasets read from files only (a
    generator's seed makes other items, not another split of the same ones)."""
    return plan.split_seeds if focus and spec.partition(":")[0] not in GENERATED_KINDS else ()


def _scored(rows: Sequence[Row], runs: dict[Vectors, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Rows -> records with the mean/std of every metric over the row's seeds and its settings."""
    out = []
    for row in rows:
        record = {"label": row.label, "group": row.group, **_describe(row.vectors)}
        record.update(summarise_runs(runs[row.vectors]))
        trained = [run["train"] for run in runs[row.vectors] if "train" in run]
        if trained:
            record["train"] = {
                key: _mean([t.get(key) for t in trained]) for key in trained[0] if key not in ("seconds",)
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


def run_experiments(
    plan: Plan,
    cache_dir: Path | None = None,
    previous: dict[Job, dict[str, Any]] | None = None,
    predictions_dir: Path | None = None,
) -> dict[str, Any]:
    """The whole run: pooled states, sweep, compression table, ablations, beta sweep, layer choice,
    CIs and claims. ``previous`` (from `previous_results`) are reused instead of recomputed (their
    prediction files must be in ``predictions_dir``). Each job writes its per-row test predictions
    to ``predictions_dir`` (default: a temporary folder). Returns the summary (what summary.json
    holds)."""
    if predictions_dir is None:
        with tempfile.TemporaryDirectory(prefix="marc-predictions-") as tmp:
            return run_experiments(plan, cache_dir, previous, Path(tmp))
    started = time.perf_counter()
    summary: dict[str, Any] = {
        "plan": plan.to_dict(),
        "machine": {**machine_info(), "torch": torch.__version__},
        "datasets": {},
    }
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
    specs = {name: summary["datasets"][name]["spec"] for name in datasets}
    context = RunContext(plan, datasets, states, predictions_dir, specs, cache_dir)

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
        result["sweep"] = _scored(sweep, _collect(sweep_results, name, sweep, plan, plan.sweep_seeds))
        result["mid_layer"] = choose_mid_layer(result["sweep"], final)
    summary["layer_choice"] = {
        **choose_served_layer(summary["datasets"]),
        "backbone": plan.backbone,
        "dim": plan.dim,
        "beta": default_beta,
    }
    served = summary["layer_choice"]["layer"]
    parts: dict[str, dict[str, list[Row]]] = {}
    for name in list(datasets):
        mid = summary["datasets"][name]["mid_layer"]
        genres = "item_genres" in datasets[name].meta
        focus = not plan.focus_datasets or specs[name] in plan.focus_datasets
        parts[name] = {
            "compression": compression_rows(final, mid, plan.dims, states[name][final].shape[1], genres),
            "ablations": ablation_rows(plan, final, mid, default_beta, served, focus),
            "beta": beta_rows(plan, mid, default_beta),
            **({"fixes": fix_rows(plan, served)} if focus and plan.fixes else {}),
        }
        for split in _splits(plan, specs[name], focus):
            # The same items and texts (the cached states serve), another random split.
            replicate = replace(load_dataset(specs[name], seed=split), name=f"{name}-split{split}")
            datasets[replicate.name], states[replicate.name] = replicate, states[name]
            specs[replicate.name] = specs[name]
            parts[replicate.name] = {"compression": replicate_rows(served, plan.dim, genres)}
            summary["replicates"] = summary.get("replicates", {})
            summary["replicates"][replicate.name] = {
                "of": name,
                "split_seed": split,
                "layer": served,
                **_dataset_info(replicate),
            }

    # 2 + 3. everything else, all datasets at once so the workers stay busy (LoRA: its own seeds)
    tick = time.perf_counter()
    jobs = [
        Job(name, row.vectors, seed)
        for name, tables in parts.items()
        for rows in tables.values()
        for row in rows
        for seed in (plan.lora_seeds if row.vectors.kind == "lora" else plan.seeds)
    ]
    results = run_jobs(context, jobs, "2/2 compression, ablations, LoRA, beta", previous)
    timings["tables_seconds"] = time.perf_counter() - tick

    tick = time.perf_counter()
    for name, tables in parts.items():
        replicate = name in summary.get("replicates", {})
        result = summary["replicates" if replicate else "datasets"][name]
        for table, rows in tables.items():
            result[table] = _scored(rows, _collect(results, name, rows, plan))
        records = [r for table in ("sweep", *tables) if table in result for r in result[table]]
        evidence = collect_evidence(datasets[name], records, predictions_dir, plan.resamples)
        for record in records:
            evidence.attach(record)
        if replicate:
            result["claims"] = replicate_claims(result, evidence.compare)
        else:
            result["claims"] = claims(result, final, evidence.compare, plan.dim)
    timings["intervals_seconds"] = time.perf_counter() - tick

    if plan.lora_cost_steps > 0:
        tick = time.perf_counter()
        summary["lora_cost"] = _lora_cost(plan, datasets, summary, final, cache_dir, predictions_dir)
        timings["lora_cost_seconds"] = time.perf_counter() - tick

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
    summary["machine"]["load_average_at_end"] = load_average()
    return summary


def _job_seconds(result: dict[str, Any]) -> float:
    return float(result.get("seconds") or 0.0) + float((result.get("train") or {}).get("seconds") or 0.0)


def _collect(
    results: dict[Job, dict[str, Any]],
    dataset: str,
    rows: Sequence[Row],
    plan: Plan,
    seeds: Sequence[int] | None = None,
) -> dict[Vectors, list[dict[str, Any]]]:
    """Per-seed results of each row, in seed order (LoRA rows ran for the plan's LoRA seeds)."""
    runs: dict[Vectors, list[dict[str, Any]]] = {}
    for row in rows:
        row_seeds = plan.lora_seeds if row.vectors.kind == "lora" else (seeds or plan.seeds)
        runs[row.vectors] = [results[Job(dataset, row.vectors, seed)] for seed in row_seeds]
    return runs


LORA_COST_BATCH = 64
"""Interactions per timed full-depth LoRA step (a 256-row step at the final layer takes minutes here)."""


def _lora_cost(
    plan: Plan,
    datasets: dict[str, RecDataset],
    summary: dict[str, Any],
    final: int,
    cache_dir: Path | None,
    predictions_dir: Path,
) -> dict[str, Any]:
    """Full-depth LoRA (all kept layers) on the first dataset at its mid and final layer: a few steps
    timed, extrapolated to an epoch. Each measurement loads its own backbone; it is saved in
    ``predictions_dir`` and reused by a resumed run with the same settings."""
    name = next(iter(datasets))
    mid = summary["datasets"][name]["mid_layer"]
    out: dict[str, Any] = {"dataset": name, "by_layer": {}}
    for layer in dict.fromkeys((mid, final)):
        saved = predictions_dir / f"lora-cost-{slug(name)}-L{layer}-steps{plan.lora_cost_steps}.json"
        if saved.is_file():
            record = json.loads(saved.read_text())
            if record.get("result_settings") == plan.result_settings():
                out["by_layer"][str(layer)] = record["cost"]
                continue
        config = ModelConfig(
            backbone=plan.backbone,
            layer=layer,
            dim=plan.dim,
            pooling=plan.pooling,  # type: ignore[arg-type]
            max_length=plan.max_length,
        )
        train = TrainConfig(mode="lora", lora_layers=0, batch_size=LORA_COST_BATCH)
        cost = measure_lora_cost(
            datasets[name], config, train, steps=plan.lora_cost_steps, cache_dir=cache_dir
        )
        out["by_layer"][str(layer)] = cost
        saved.parent.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps({"result_settings": plan.result_settings(), "cost": cost}))
        log.info(
            "full-depth LoRA at L%d: %.1f s per step, ~%.0f s per epoch",
            layer,
            cost["seconds_per_step"],
            cost["epoch_seconds_estimate"],
        )
    return out


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
