"""The claims check against the paper: each comparison of two table rows as a measured gap, its seed
noise and a verdict (better / worse / tie)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from marc.experiments.choice import nan_safe

MIN_GAP = 0.005
"""Smallest AUC gap called 'better'/'worse': seed noise misses the noise of the fixed test sample
(about 0.01 AUC on a thousand cold rows), and a single seed has no noise estimate at all."""


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


def find_record(records: Sequence[dict[str, Any]], **where: Any) -> dict[str, Any]:
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
        key=lambda r: nan_safe(r["auc_cold"]),
    )
    final_pca = find_record(sweep, kind="pca", layer=final)
    mid_pca = find_record(sweep, kind="pca", layer=mid)
    mid_full, final_full = (
        find_record(sweep, kind="full", layer=mid),
        find_record(sweep, kind="full", layer=final),
    )
    lines.append(
        f"**Claim 1 (middle layers beat the final layer).** Sweep, test cold AUC: chosen mid layer L{mid} "
        f"(by validation) vs final L{final}: PCA-k {_gap(mid_pca, final_pca)}, full size "
        f"{_gap(mid_full, final_full)}; the best layer on test is L{best_sweep['layer']}. "
        "Compression table, mid + PCA vs final + PCA at each k: "
        + ", ".join(
            f"k={k} "
            + _gap(
                find_record(table, kind="pca", layer=mid, k=k),
                find_record(table, kind="pca", layer=final, k=k),
            )
            for k in sorted({r["k"] for r in table if r["k"]})
        )
        + "."
    )

    parts = []
    for k in sorted({r["k"] for r in table if r["k"]}):
        marc = next(r for r in table if _is_marc_default(r) and r["k"] == k)
        final_pca_k = find_record(table, kind="pca", layer=final, k=k)
        linear = next(r for r in table if r["kind"] == "trained" and r["settings"] and r["k"] == k)
        parts.append(f"k={k}: vs final+PCA {_gap(marc, final_pca_k)}, vs final+linear C {_gap(marc, linear)}")
    lines.append(
        "**Claim 2 (compressing the final layer is suboptimal).** MARC at the mid layer minus the usual "
        "final-layer compressions, test cold AUC: " + "; ".join(parts) + "."
    )

    full = find_record(table, kind="full", layer=final)
    ids = find_record(table, kind="ids")
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
