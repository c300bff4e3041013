"""The PNG plots of a run: AUC vs layer (drawn by the layer probe's plot), AUC vs k for each
compression, and the beta sweep."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from marc.experiments.claims import find_record
from marc.probe import plot_probe


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def plot_sweep(result: dict[str, Any], summary: dict[str, Any], path: Path) -> Path:
    """AUC vs layer depth (cold/warm, PCA-k of the standardised state), final layer and chosen mid
    layer marked; drawn by the layer probe's plot from a probe-shaped report."""
    backbone = summary["backbone"]
    layers = sorted({r["layer"] for r in result["sweep"] if r["layer"] is not None})
    report = {
        "records": [
            {
                "layer": layer,
                "pca": find_record(result["sweep"], kind="pca_std", layer=layer),
            }
            for layer in layers
        ],
        "ids_only": find_record(result["sweep"], kind="ids"),
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
    """Test cold GAUC and cold AUC (two panels) vs k for each compression; ids only and the final
    layer's full state as lines."""
    plt = _pyplot()
    table = result["compression"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), sharex=True)
    methods: dict[str, list[dict[str, Any]]] = {}
    for record in table:
        if record["k"]:
            methods.setdefault(record["label"], []).append(record)
    panels = (("gauc_cold", "auc_cold"), ("cold items: GAUC (per user)", "cold items: AUC"))
    for ax, key, title in zip(axes, *panels, strict=True):
        for label, records in methods.items():
            records = sorted(records, key=lambda r: r["k"])
            ax.errorbar(
                [r["k"] for r in records],
                [r[key] for r in records],
                yerr=_ci_errors(records, key),
                fmt="-o",
                capsize=3,
                label=label,
            )
        for record, style in (
            (find_record(table, kind="ids"), "-."),
            (find_record(table, kind="full"), "--"),
        ):
            ax.axhline(record[key], color="grey", linestyle=style, linewidth=1, label=record["label"])
        ax.set_xscale("log", base=2)
        ax.set_xlabel("k (vector size)")
        ax.set_ylabel("test GAUC" if key.startswith("gauc") else "test AUC")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="best")
    fig.suptitle(f"Compression at k on {result['name']} (mean over seeds, 95% CI over items and seeds)")
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
            yerr=_ci_errors(records, key),
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


def _ci_errors(records: list[dict[str, Any]], key: str) -> list[list[float]]:
    """Asymmetric error bars [below, above] from each record's 95% CI (none when it has no CI)."""
    below, above = [], []
    for record in records:
        low, high = (record.get("ci") or {}).get(key) or (record[key], record[key])
        below.append(max(0.0, record[key] - low))
        above.append(max(0.0, high - record[key]))
    return [below, above]


def _save(fig: Any, plt: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
