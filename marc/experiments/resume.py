"""`--resume`: the per-seed job results of an earlier run that this run may reuse (every job is seeded,
so the same job under the same result settings gives the same numbers): those in its summary.json,
and those each job saved beside its predictions (so an interrupted run loses only its running jobs)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from marc.experiments.jobs import Job
from marc.experiments.plan import RESULT_SETTINGS, Plan, Vectors

log = logging.getLogger(__name__)


def previous_results(summary_path: Path, plan: Plan) -> dict[Job, dict[str, Any]]:
    """Per-seed job results of an earlier run's ``summary.json`` that this plan can reuse: every job
    is seeded, so the same job under the same result settings gives the same numbers. Empty when
    the file is missing or was made with other result settings."""
    path = Path(summary_path)
    saved = saved_jobs(path.parent / "predictions", plan)
    if not path.is_file():
        return saved
    summary = json.loads(path.read_text())
    now = plan.result_settings()
    before = {k: summary.get("plan", {}).get(k) for k in RESULT_SETTINGS}
    if now != before:
        changed = sorted(k for k in RESULT_SETTINGS if now[k] != before[k])
        log.warning("%s: not reused, made with other settings (%s)", path, ", ".join(changed))
        return saved
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
    return {**saved, **results}


def saved_jobs(predictions_dir: Path, plan: Plan) -> dict[Job, dict[str, Any]]:
    """The job results saved beside the predictions (`marc.experiments.jobs.save_job`) that were
    made with this plan's result settings on one of its datasets."""
    results: dict[Job, dict[str, Any]] = {}
    now = plan.result_settings()
    for path in sorted(Path(predictions_dir).glob("*/*.json")):
        try:
            record = json.loads(path.read_text())
            if record["result_settings"] != now or record["spec"] not in plan.datasets:
                continue
            settings = tuple(sorted(record["settings"].items()))
            vectors = Vectors(record["kind"], record["layer"], record["k"], settings)
            results[Job(record["dataset"], vectors, record["seed"])] = record["result"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            log.warning("%s: not reused (%s)", path, error)
    return results
