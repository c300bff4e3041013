"""The files a run writes: summary.json, results.md (markdown tables and the claims check), the plots,
and optionally the generated block of a document such as EXPERIMENTS.md."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from marc import json_out
from marc.ctr_metrics import format_metric
from marc.experiments.claims import claim_lines
from marc.experiments.plots import plot_beta, plot_compression, plot_sweep

DOC_BEGIN = "<!-- BEGIN GENERATED: marc experiments -->"


DOC_END = "<!-- END GENERATED: marc experiments -->"


METRIC_COLUMNS: tuple[tuple[str, str], ...] = (
    ("gauc_cold", "GAUC cold"),
    ("auc_cold", "AUC cold"),
    ("auc_warm", "AUC warm"),
    ("logloss_cold", "LogLoss cold"),
    ("logloss_warm", "LogLoss warm"),
)


def slug(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9]+", "-", name).strip("-").lower()


def _value(record: dict[str, Any], key: str) -> str:
    """Mean over seeds, its 95% bootstrap CI over items and seeds when computed, and the seeds' sample
    std."""
    text = format_metric(record.get(key))
    if text == "n/a":
        return text
    ci = (record.get("ci") or {}).get(key)  # None: too few test rows for an interval
    if ci is not None:
        text += f" [{ci[0]:.3f}, {ci[1]:.3f}]"
    if len(record.get("seeds", [])) > 1:
        text += f" ± {record.get(f'{key}_std', 0.0):.4f}"
    return text


def _bytes(record: dict[str, Any]) -> str:
    return f"{record['bytes_per_item_fp32']} ({record['bytes_per_item_fp16']})" if record["dim"] else "0"


def metrics_table(
    records: Sequence[dict[str, Any]], first: str = "vectors", extra: Sequence[str] = ()
) -> str:
    """Markdown table: label, k, bytes per item, cold GAUC, AUC and LogLoss on cold and warm test
    items."""
    header = [first, "k", "bytes/item fp32 (fp16)", *(title for _, title in METRIC_COLUMNS), *extra]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for record in records:
        cells = [record["label"], str(record["dim"] or "-"), _bytes(record)]
        cells += [_value(record, key) for key, _ in METRIC_COLUMNS]
        for key in extra:
            value = (record.get("train") or {}).get(key)
            cells.append("n/a" if value is None else f"{value:.4g}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sweep_table(result: dict[str, Any], final: int, dim: int) -> str:
    header = (
        f"| layer | PCA-{dim} (standardised) GAUC cold | AUC cold | AUC warm | valid AUC cold (selects) |"
    )
    lines = [header, "|---|---:|---:|---:|---:|"]
    for record in result["sweep"]:
        if record["kind"] == "ids":
            name = "ids only"
        else:
            name = str(record["layer"])
            name += " (final)" if record["layer"] == final else ""
            name += " **(chosen mid)**" if record["layer"] == result["mid_layer"] else ""
        keys = ("gauc_cold", "auc_cold", "auc_warm", "valid_auc_cold")
        cells = [_value(record, key) for key in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def lora_cost_lines(cost: dict[str, Any] | None) -> list[str]:
    """The measured full-depth LoRA cost, one bullet per layer."""
    if not cost:
        return []
    lines = [
        f"#### Full-depth LoRA cost (measured on `{cost['dataset']}`, not run)",
        "",
    ]
    for layer, c in cost["by_layer"].items():
        lines.append(
            f"- LoRA on all {c['lora_layers']} kept layers at L{layer}, batch {c['batch_size']} "
            f"({c['distinct_items_per_step']} distinct items per step): {c['seconds_per_step']:.1f} s per "
            f"step (median of {c['steps_timed']} timed steps, {c['threads']} threads); "
            f"{c['steps_per_epoch']} steps per epoch -> about {c['epoch_seconds_estimate'] / 60:.0f} min "
            "per epoch on this machine."
        )
    return lines


def markdown(summary: dict[str, Any], plots: dict[str, dict[str, str]], command: str) -> str:
    """The results as markdown (results.md, and the generated block of EXPERIMENTS.md)."""
    plan, backbone, machine, timings = (
        summary["plan"],
        summary["backbone"],
        summary["machine"],
        summary["timings"],
    )
    final = backbone["num_layers"]
    out = [
        f"Regenerate: `{command}`",
        "",
        f"Run: {plan['size']} size, backbone `{backbone['source']}` ({final} layers, hidden "
        f"{backbone['hidden_size']}), seeds {_seeds(plan['seeds'])} (sweep: {_seeds(plan['sweep_seeds'])}), "
        f"wall time {timings['total_seconds'] / 60:.1f} min on {machine['cores']} CPU cores "
        f"({machine['cpu']}, {machine['platform']}; load average {machine['load_average_at_start']} "
        f"at start, {machine['load_average_at_end']} at end: the machine was shared). Timings (s): "
        + ", ".join(f"{k.removesuffix('_seconds')} {v}" for k, v in timings.items())
        + "."
        + _jobs_note(summary.get("jobs")),
        "",
        f"Served-layer choice: **L{summary['layer_choice']['layer']}** ({summary['layer_choice']['rule']}).",
    ]
    for name, result in summary["datasets"].items():
        files = plots[name]
        interactions = result["interactions"]
        out += [
            "",
            f"### Dataset `{name}`",
            "",
            f"{result['num_items']} items ({result['cold_items']} cold: never in train), "
            f"{result['num_users']} users, {interactions['train']}/{interactions['valid']}/"
            f"{interactions['test']} train/valid/test "
            f"interactions ({result['cold_test_interactions']} test rows on cold items), train positive rate "
            f"{result['positive_rate_train']}.",
            "",
            f"#### 1. Layer sweep (frozen backbone; PCA to k={plan['dim']} of the per-channel standardised "
            f"state; seeds {_seeds(plan['sweep_seeds'])})",
            "",
            f"![AUC vs layer, {name}]({files['sweep']})",
            "",
            sweep_table(result, final, plan["dim"]),
            "",
            "#### 2. Compression table (test: mean over seeds [95% bootstrap CI over items and seeds] ± "
            "the seeds' sample std; GAUC: per-user AUC among cold items, weighted by the user's rows)",
            "",
            f"![compression, {name}]({files['compression']})",
            "",
            metrics_table(result["compression"]),
            "",
            f"#### 3. Ablations (k={plan['dim']}, mid layer L{result['mid_layer']})",
            "",
            metrics_table(
                result["ablations"],
                "variant",
                extra=("test_auc_cold", "kl_nats", "best_epoch", "epoch_seconds"),
            ),
            "",
            *_lora_lines(result),
            f"beta sweep: ![beta sweep, {name}]({files['beta']})",
            "",
            metrics_table(result["beta"], "beta", extra=("kl_nats", "best_epoch")),
            "",
            *_fixes_lines(result),
            "#### Claims check (test cold GAUC, row a − row b: difference [95% paired bootstrap CI over "
            "items and seeds], bootstrap p, verdict; each claim is decided by its primary comparison, "
            "Holm-adjusted over the dataset's primaries; the others are unadjusted and decide nothing)",
            "",
            *(f"- {line}" if not line.startswith(" ") else line for line in claim_lines(result["claims"])),
        ]
    for name, replicate in summary.get("replicates", {}).items():
        interactions = replicate["interactions"]
        out += [
            "",
            f"### Replicate `{name}`: `{replicate['of']}` on the data split with seed "
            f"{replicate['split_seed']}",
            "",
            f"{replicate['cold_items']} cold items, {interactions['train']}/{interactions['valid']}/"
            f"{interactions['test']} train/valid/test interactions ({replicate['cold_test_interactions']} "
            f"test rows on cold items); the rows at the served layer L{replicate['layer']}.",
            "",
            metrics_table(replicate["compression"]),
            "",
            *(f"- {line}" if not line.startswith(" ") else line for line in claim_lines(replicate["claims"])),
        ]
    if summary.get("lora_cost"):
        out += ["", *lora_cost_lines(summary["lora_cost"])]
    return "\n".join(out) + "\n"


def _lora_lines(result: dict[str, Any]) -> list[str]:
    """How the LoRA rows trained: steps per epoch, the warm start's validation AUC and each LoRA
    epoch's (means over seeds), the best epoch (0 = no LoRA epoch beat the warm start)."""
    lines = []
    for record in (r for r in result["ablations"] if r["kind"] == "lora"):
        train = record["train"]
        epochs = sorted(k for k in train if k.startswith("valid_auc_epoch"))
        moves = ", ".join(f"{train[k]:.4f}" for k in epochs if train[k] is not None)
        lines.append(
            f"- {record['label']}: {train.get('steps_per_epoch') or 0:.0f} steps per epoch; validation AUC "
            f"{train.get('warm_start_valid_auc') or math.nan:.4f} after the warm start, then {moves} "
            f"per LoRA epoch; best epoch {train.get('best_epoch') or 0:.1f} (mean over seeds; 0 = the warm "
            f"start kept), {train.get('epoch_seconds') or 0:.0f} s per epoch"
        )
    return [*lines, ""] if lines else []


def _fixes_lines(result: dict[str, Any]) -> list[str]:
    """The fixes table (focus datasets only)."""
    if not result.get("fixes"):
        return []
    return [
        "#### MARC against PCA of its layer: cheap fixes (k and layer as the PCA row)",
        "",
        metrics_table(result["fixes"], "variant", extra=("test_gauc_cold", "kl_nats", "best_epoch")),
        "",
    ]


def _jobs_note(jobs: dict[str, Any] | None) -> str:
    if not jobs:
        return ""
    note = f" The {jobs['total']} jobs (training + downstream evaluation, each timed in its worker) add up"
    note += f" to {jobs['job_seconds'] / 60:.1f} min"
    if jobs["reused_from_previous_run"]:
        note += f"; {jobs['reused_from_previous_run']} of them were reused from an earlier run (`--resume`)"
    return note + "."


def _seeds(seeds: Sequence[int]) -> str:
    return ",".join(map(str, seeds))


def write_outputs(
    summary: dict[str, Any], out_dir: Path, command: str, doc_prefix: str = ""
) -> dict[str, Path]:
    """summary.json, results.md and three plots per dataset under ``out_dir``. ``doc_prefix`` is the
    path from the markdown's location to ``out_dir`` (image links in results.md are relative to it)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    links: dict[str, dict[str, str]] = {}
    for name, result in summary["datasets"].items():
        base = slug(name)
        paths = {
            "sweep": plot_sweep(result, summary, out_dir / f"sweep-{base}.png"),
            "compression": plot_compression(result, out_dir / f"compression-{base}.png"),
            "beta": plot_beta(result, out_dir / f"beta-{base}.png"),
        }
        written.update({f"{kind}-{base}": path for kind, path in paths.items()})
        links[name] = {kind: f"{doc_prefix}{path.name}" for kind, path in paths.items()}
    summary_path = out_dir / "summary.json"
    summary_path.write_text(json_out.dumps(summary, indent=2) + "\n")
    results_path = out_dir / "results.md"
    results_path.write_text("# Experiment results\n\n" + markdown(summary, links, command))
    written.update(summary=summary_path, results=results_path)
    return written


def update_doc(doc: Path, summary: dict[str, Any], out_dir: Path, command: str) -> None:
    """Replace the generated block of ``doc`` (between DOC_BEGIN and DOC_END) with this run's results,
    image links relative to the document."""
    doc = Path(doc)
    text = doc.read_text() if doc.is_file() else ""
    if DOC_BEGIN not in text or DOC_END not in text:
        raise ValueError(
            f"{doc}: no generated block to replace (add the lines {DOC_BEGIN!r} and {DOC_END!r})"
        )
    prefix = os.path.relpath(Path(out_dir).resolve(), doc.resolve().parent) + "/"
    links = {
        name: {kind: f"{prefix}{kind}-{slug(name)}.png" for kind in ("sweep", "compression", "beta")}
        for name in summary["datasets"]
    }
    head, rest = text.split(DOC_BEGIN, 1)
    tail = rest.split(DOC_END, 1)[1]
    doc.write_text(f"{head}{DOC_BEGIN}\n{markdown(summary, links, command)}{DOC_END}{tail}")
