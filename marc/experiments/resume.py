"""`--resume`: the per-seed job results of an earlier run that this run may reuse (every job is seeded,
so the same job under the same result settings gives the same numbers)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from marc.experiments.jobs import Job
from marc.experiments.plan import Plan, Vectors

log = logging.getLogger(__name__)


RESULT_SETTINGS = (
    "backbone",
    "generator_sizes",
    "ctr",
    "train_epochs",
    "train_patience",
    "train_batch_size",
    "pooling",
    "max_length",
)
"""Plan fields that change a job's result (the others only choose which jobs run)."""


def previous_results(summary_path: Path, plan: Plan) -> dict[Job, dict[str, Any]]:
    """Per-seed job results of an earlier run's ``summary.json`` that this plan can reuse: every job
    is seeded, so the same job under the same result settings gives the same numbers. Empty when
    the file is missing or was made with other result settings."""
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
