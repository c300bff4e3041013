"""Reporting for `marc.experiments`: markdown tables, the claims check against the paper, PNG plots, and
the files a run writes (summary.json, results.md, plots; optionally the generated block of
EXPERIMENTS.md)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DOC_BEGIN = "<!-- BEGIN GENERATED: marc experiments -->"
DOC_END = "<!-- END GENERATED: marc experiments -->"

MIN_GAP = 0.005
"""Smallest AUC gap called 'better'/'worse': seed noise misses the noise of the fixed test sample
(about 0.01 AUC on a thousand cold rows), and a single seed has no noise estimate at all."""

METRIC_COLUMNS: tuple[tuple[str, str], ...] = (
    ("auc_cold", "AUC cold"),
    ("auc_warm", "AUC warm"),
    ("logloss_cold", "LogLoss cold"),
    ("logloss_warm", "LogLoss warm"),
)


def slug(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9]+", "-", name).strip("-").lower()


def _value(record: dict[str, Any], key: str) -> str:
    mean = record.get(key)
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    if len(record.get("seeds", [])) > 1:
        return f"{mean:.4f} ± {record.get(f'{key}_std', 0.0):.4f}"
    return f"{mean:.4f}"


def _bytes(record: dict[str, Any]) -> str:
    return f"{record['bytes_per_item_fp32']} ({record['bytes_per_item_fp16']})" if record["dim"] else "0"


def metrics_table(
    records: Sequence[dict[str, Any]], first: str = "vectors", extra: Sequence[str] = ()
) -> str:
    """Markdown table: label, k, bytes per item, AUC and LogLoss on cold and warm test items."""
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
    by_layer: dict[int, dict[str, dict[str, Any]]] = {}
    for record in result["sweep"]:
        if record["layer"] is not None:
            by_layer.setdefault(record["layer"], {})[record["kind"]] = record
    header = (
        f"| layer | PCA-{dim} AUC cold | PCA-{dim} AUC warm | full AUC cold | full AUC warm "
        f"| PCA-{dim} valid AUC cold |"
    )
    lines = [header, "|---|---:|---:|---:|---:|---:|"]
    ids = next(r for r in result["sweep"] if r["kind"] == "ids")
    cells = (_value(ids, "auc_cold"), _value(ids, "auc_warm"), "", "", _value(ids, "valid_auc_cold"))
    lines.append("| ids only | " + " | ".join(cells) + " |")
    for layer, kinds in sorted(by_layer.items()):
        marks = " (final)" if layer == final else ""
        marks += " **(chosen mid)**" if layer == result["mid_layer"] else ""
        p, f = kinds["pca"], kinds["full"]
        lines.append(
            f"| {layer}{marks} | {_value(p, 'auc_cold')} | {_value(p, 'auc_warm')} | {_value(f, 'auc_cold')} "
            f"| {_value(f, 'auc_warm')} | {_value(p, 'valid_auc_cold')} |"
        )
    return "\n".join(lines)


# ---- claims check -------------------------------------------------------------------------------------


def compare(a: dict[str, Any], b: dict[str, Any], key: str = "auc_cold") -> tuple[float, float, str]:
    """a - b on ``key`` with a noise scale (standard error of the difference over seeds; with one
    seed there is none) and a verdict: 'better' / 'worse' when the gap exceeds twice the noise and
    MIN_GAP, else 'tie'."""
    diff = a[key] - b[key]
    n = max(1, min(len(a.get("seeds", [0])), len(b.get("seeds", [0]))))
    noise = math.sqrt((a.get(f"{key}_std", 0.0) ** 2 + b.get(f"{key}_std", 0.0) ** 2) / n)
    if math.isnan(diff):
        return diff, noise, "n/a"
    margin = max(2 * noise, MIN_GAP)
    return diff, noise, "better" if diff > margin else "worse" if diff < -margin else "tie"


def _gap(a: dict[str, Any], b: dict[str, Any], key: str = "auc_cold") -> str:
    diff, noise, verdict = compare(a, b, key)
    return f"{diff:+.4f} (± {noise:.4f}, {verdict})"


def _find(records: Sequence[dict[str, Any]], **where: Any) -> dict[str, Any]:
    for record in records:
        if all(record.get(k) == v for k, v in where.items()):
            return record
    raise KeyError(f"no record with {where}")


def _is_marc_default(record: dict[str, Any]) -> bool:
    return record["kind"] == "trained" and not record["settings"]


def claims(result: dict[str, Any], final: int) -> list[str]:
    """Bullet points, one per claim and dataset-level comparison, each with the measured gap."""
    mid = result["mid_layer"]
    sweep, table, ablations = result["sweep"], result["compression"], result["ablations"]
    lines = []

    best_sweep = max(
        (r for r in sweep if r["kind"] == "pca"),
        key=lambda r: -math.inf if math.isnan(r["auc_cold"]) else r["auc_cold"],
    )
    final_pca = _find(sweep, kind="pca", layer=final)
    mid_pca = _find(sweep, kind="pca", layer=mid)
    mid_full, final_full = _find(sweep, kind="full", layer=mid), _find(sweep, kind="full", layer=final)
    lines.append(
        f"**Claim 1 (middle layers beat the final layer).** Sweep, test cold AUC: chosen mid layer L{mid} "
        f"(by validation) vs final L{final}: PCA-k {_gap(mid_pca, final_pca)}, full size "
        f"{_gap(mid_full, final_full)}; the best layer on test is L{best_sweep['layer']}. "
        "Compression table, mid + PCA vs final + PCA at each k: "
        + ", ".join(
            f"k={k} "
            + _gap(_find(table, kind="pca", layer=mid, k=k), _find(table, kind="pca", layer=final, k=k))
            for k in sorted({r["k"] for r in table if r["k"]})
        )
        + "."
    )

    parts = []
    for k in sorted({r["k"] for r in table if r["k"]}):
        marc = next(r for r in table if _is_marc_default(r) and r["k"] == k)
        final_pca_k = _find(table, kind="pca", layer=final, k=k)
        linear = next(r for r in table if r["kind"] == "trained" and r["settings"] and r["k"] == k)
        parts.append(f"k={k}: vs final+PCA {_gap(marc, final_pca_k)}, vs final+linear C {_gap(marc, linear)}")
    lines.append(
        "**Claim 2 (compressing the final layer is suboptimal).** MARC at the mid layer minus the usual "
        "final-layer compressions, test cold AUC: " + "; ".join(parts) + "."
    )

    full = _find(table, kind="full", layer=final)
    ids = _find(table, kind="ids")
    parts = []
    for k in sorted({r["k"] for r in table if r["k"]}):
        marc = next(r for r in table if _is_marc_default(r) and r["k"] == k)
        parts.append(f"k={k} ({marc['bytes_per_item_fp16']} B fp16): {_gap(marc, full)}")
    default = next(r for r in ablations if _is_marc_default(r))
    ablation_parts = [
        f"{r['label']}: {_gap(r, default)}" for r in ablations if r is not default and r["kind"] == "trained"
    ]
    lines.append(
        f"**Claim 3 (small MARC vectors keep or beat the full representation).** MARC minus the final "
        f"layer at full size ({full['dim']} floats, {full['bytes_per_item_fp32']} B), test cold AUC: "
        + "; ".join(parts)
        + f". Ids only: {ids['auc_cold']:.4f}. Ablations at k={default['k']} minus full MARC: "
        + "; ".join(ablation_parts)
        + "."
    )
    return lines


# ---- plots ------------------------------------------------------------------------------------------


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def plot_sweep(result: dict[str, Any], summary: dict[str, Any], path: Path) -> Path:
    """AUC vs layer depth (cold/warm, PCA-k/full), final layer and chosen mid layer marked; drawn by
    the layer probe's plot from a probe-shaped report."""
    from marc.probe import plot_probe

    backbone = summary["backbone"]
    layers = sorted({r["layer"] for r in result["sweep"] if r["layer"] is not None})
    report = {
        "records": [
            {
                "layer": layer,
                "pca": _find(result["sweep"], kind="pca", layer=layer),
                "full": _find(result["sweep"], kind="full", layer=layer),
            }
            for layer in layers
        ],
        "ids_only": _find(result["sweep"], kind="ids"),
        "final_layer": backbone["num_layers"],
        "num_layers": backbone["num_layers"],
        "best_layer": result["mid_layer"],
        "select_by": "valid cold AUC, below the final layer",
        "dim": summary["plan"]["dim"],
        "backbone": backbone["source"],
        "dataset": result["name"],
    }
    return plot_probe(report, path)


def plot_compression(result: dict[str, Any], path: Path) -> Path:
    """Test AUC (cold and warm panels) vs k for each compression; ids only and full size as lines."""
    plt = _pyplot()
    table = result["compression"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), sharex=True)
    methods: dict[str, list[dict[str, Any]]] = {}
    for record in table:
        if record["k"]:
            methods.setdefault(record["label"], []).append(record)
    for ax, key, title in zip(axes, ("auc_cold", "auc_warm"), ("cold items", "warm items"), strict=True):
        for label, records in methods.items():
            records = sorted(records, key=lambda r: r["k"])
            ax.errorbar(
                [r["k"] for r in records],
                [r[key] for r in records],
                yerr=[r[f"{key}_std"] for r in records],
                fmt="-o",
                capsize=3,
                label=label,
            )
        for record, style in ((_find(table, kind="ids"), "-."), (_find(table, kind="full"), "--")):
            ax.axhline(record[key], color="grey", linestyle=style, linewidth=1, label=record["label"])
        ax.set_xscale("log", base=2)
        ax.set_xlabel("k (vector size)")
        ax.set_ylabel("test AUC")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="best")
    fig.suptitle(f"Compression at k on {result['name']} (mean ± std over seeds)")
    fig.tight_layout()
    return _save(fig, plt, path)


def plot_beta(result: dict[str, Any], path: Path) -> Path:
    """Test AUC (cold, warm) vs beta, and the nats z carries (KL at the best epoch)."""
    plt = _pyplot()
    records = result["beta"]
    positions = range(len(records))
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for key, label in (("auc_cold", "cold items"), ("auc_warm", "warm items")):
        ax.errorbar(
            positions,
            [r[key] for r in records],
            yerr=[r[f"{key}_std"] for r in records],
            fmt="-o",
            capsize=3,
            label=f"test AUC, {label}",
        )
    ax.set_xticks(list(positions), [r["group"] for r in records])
    ax.set_xlabel("beta (weight of the KL information constraint)")
    ax.set_ylabel("test AUC")
    ax.grid(alpha=0.3)
    kl = [(r.get("train") or {}).get("kl_nats") for r in records]
    if all(v is not None for v in kl):
        twin = ax.twinx()
        twin.plot(list(positions), kl, ":s", color="grey", label="KL of z (nats)")
        twin.set_yscale("symlog")
        twin.set_ylabel("KL(q(z|x) || N(0, I)), nats")
        twin.legend(fontsize=8, loc="upper right")
    ax.legend(fontsize=8, loc="lower left")
    ax.set_title(f"beta sweep: MARC at L{result['mid_layer']}, k={records[0]['k']}, on {result['name']}")
    fig.tight_layout()
    return _save(fig, plt, path)


def _save(fig: Any, plt: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---- files ------------------------------------------------------------------------------------------


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
        f"wall time {timings['total_seconds'] / 60:.1f} min on {machine['cpu_count']} CPU cores "
        f"({machine['processor']}, {machine['platform']}; load average {machine['load_average_at_start']} "
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
            f"#### 1. Layer sweep (frozen backbone; k={plan['dim']} for PCA)",
            "",
            f"![AUC vs layer, {name}]({files['sweep']})",
            "",
            sweep_table(result, final, plan["dim"]),
            "",
            "#### 2. Compression table (test, mean ± std over seeds)",
            "",
            f"![compression, {name}]({files['compression']})",
            "",
            metrics_table(result["compression"]),
            "",
            f"#### 3. Ablations (k={plan['dim']}, mid layer L{result['mid_layer']})",
            "",
            metrics_table(result["ablations"], "variant", extra=("test_auc_cold", "kl_nats", "best_epoch")),
            "",
            f"beta sweep: ![beta sweep, {name}]({files['beta']})",
            "",
            metrics_table(result["beta"], "beta", extra=("kl_nats", "best_epoch")),
            "",
            "#### Claims check (test cold AUC differences; ± is the seed noise of the difference)",
            "",
            *(f"- {line}" for line in claims(result, final)),
        ]
    return "\n".join(out) + "\n"


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
    summary_path.write_text(json.dumps(summary, indent=2, default=_json_default) + "\n")
    results_path = out_dir / "results.md"
    results_path.write_text("# Experiment results\n\n" + markdown(summary, links, command))
    written.update(summary=summary_path, results=results_path)
    return written


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def update_doc(doc: Path, summary: dict[str, Any], out_dir: Path, command: str) -> None:
    """Replace the generated block of ``doc`` (between DOC_BEGIN and DOC_END) with this run's results,
    image links relative to the document."""
    doc = Path(doc)
    text = doc.read_text() if doc.is_file() else ""
    if DOC_BEGIN not in text or DOC_END not in text:
        raise ValueError(
            f"{doc}: no generated block to replace (add the lines {DOC_BEGIN!r} and {DOC_END!r})"
        )
    import os

    prefix = os.path.relpath(Path(out_dir).resolve(), doc.resolve().parent) + "/"
    links = {
        name: {kind: f"{prefix}{kind}-{slug(name)}.png" for kind in ("sweep", "compression", "beta")}
        for name in summary["datasets"]
    }
    head, rest = text.split(DOC_BEGIN, 1)
    tail = rest.split(DOC_END, 1)[1]
    doc.write_text(f"{head}{DOC_BEGIN}\n{markdown(summary, links, command)}{DOC_END}{tail}")
