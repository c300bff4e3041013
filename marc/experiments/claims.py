"""The claims check: each claim as paired comparisons of two table rows (test cold GAUC difference, its
95% paired two-level bootstrap CI over items and seeds, its bootstrap p-value), and a plain verdict
per claim and dataset. The claims' comparisons on one dataset are one family: their p-values are
Holm-adjusted together (`marc.stats.holm`) and a comparison says "better"/"worse" only when its
adjusted p is below 1 - LEVEL. Context comparisons are reported unadjusted and decide nothing."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from marc.experiments.intervals import PRIMARY
from marc.stats import LEVEL, holm

Compare = Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]]
"""(record a, record b) -> a - b with its CI and verdict (`marc.experiments.intervals.Evidence.compare`)."""


def find_record(records: Sequence[dict[str, Any]], **where: Any) -> dict[str, Any]:
    for record in records:
        if all(record.get(k) == v for k, v in where.items()):
            return record
    raise KeyError(f"no record with {where}")


def _is_marc_default(record: dict[str, Any]) -> bool:
    return record["kind"] == "trained" and not record["settings"]


def _marc(table: Sequence[dict[str, Any]], layer: int, k: int) -> dict[str, Any]:
    return next(r for r in table if _is_marc_default(r) and r["layer"] == layer and r["k"] == k)


def _plain(comparisons: Sequence[dict[str, Any]]) -> str:
    """One word for a claim on one dataset, from its comparisons' verdicts."""
    verdicts = {c["verdict"] for c in comparisons} - {"n/a"}
    if not verdicts:
        return "not measurable (too few test rows for a CI)"
    if verdicts == {"better"}:
        return "holds"
    if verdicts == {"worse"}:
        return "fails (the opposite holds)"
    if verdicts == {"no difference"}:
        return "not shown (no difference beyond noise)"
    if "worse" in verdicts and "better" not in verdicts:
        return "fails in part (worse or no difference)"
    if "better" in verdicts and "worse" not in verdicts:
        return "holds in part (better or no difference)"
    return "mixed (better in some comparisons, worse in others)"


def claims(result: dict[str, Any], final: int, compare: Compare) -> list[dict[str, Any]]:
    """Per claim: its statement, the comparisons behind it and the plain verdict."""
    mid = result["mid_layer"]
    sweep, table, ablations = result["sweep"], result["compression"], result["ablations"]
    dims = sorted({r["k"] for r in table if r["k"]})
    out: list[dict[str, Any]] = []

    def claim(
        name: str, statement: str, comparisons: list[dict[str, Any]], extra: Sequence[dict[str, Any]] = ()
    ):
        out.append(
            {
                "claim": name,
                "statement": statement,
                "comparisons": comparisons,
                "context": list(extra),
                "verdict": _plain(comparisons),
            }
        )

    comparisons = [
        compare(
            find_record(sweep, kind="pca_std", layer=mid), find_record(sweep, kind="pca_std", layer=final)
        )
    ]
    comparisons += [compare(_marc(table, mid, k), _marc(table, final, k)) for k in dims]
    loras = [r for r in ablations if r["kind"] == "lora"]
    lora_by_layer = {r["layer"]: r for r in loras}
    if mid in lora_by_layer and final in lora_by_layer:
        comparisons.append(compare(lora_by_layer[mid], lora_by_layer[final]))
    claim(
        "1",
        f"Middle layers beat the final layer: the chosen mid layer L{mid} (by validation) against the "
        f"final layer L{final} - PCA of the standardised state, MARC (frozen) at each k, MARC with LoRA",
        comparisons,
    )

    comparisons = []
    for k in dims:
        marc = _marc(table, mid, k)
        comparisons += [
            compare(marc, find_record(table, kind="pca_std", layer=final, k=k)),
            compare(marc, find_record(table, kind="pca", layer=final, k=k)),
        ]
    claim(
        "2",
        f"Compressing the final layer is suboptimal: MARC at L{mid} against the usual final-layer "
        "compressions (PCA, standardised and raw) at the same k (C + A on the final layer: claim 1)",
        comparisons,
    )

    full = find_record(table, kind="full", layer=final)
    comparisons = [compare(_marc(table, mid, k), full) for k in dims]
    default = next(r for r in ablations if _is_marc_default(r))
    context = [
        compare(default, r)
        for r in ablations
        if r is not default and r["kind"] == "trained" and r["layer"] == mid
    ]
    context += [
        compare(_marc(table, mid, k), find_record(table, kind="pca_std", layer=mid, k=k)) for k in dims
    ]
    context += [compare(_marc(table, mid, k), find_record(table, kind="surface")) for k in dims[-1:]]
    context.append(compare(find_record(table, kind="surface"), find_record(table, kind="ids")))
    claim(
        "3",
        f"Small MARC vectors keep or beat the full representation: MARC at L{mid} at each k against the "
        f"final layer's full state ({full['dim']} floats); context: full MARC against each ablation, "
        "against PCA of the same layer, against the text's surface form",
        comparisons,
        context,
    )

    comparisons, strongest = [], {}
    for k in dims:
        marc = _marc(table, mid, k)
        baselines = [r for r in table if r["kind"] in BASELINE_KINDS and r["k"] in (None, k)]
        baselines.append(find_record(table, kind="pca_std", layer=mid, k=k))
        comparisons += [compare(marc, b) for b in baselines]
        best = max(baselines, key=lambda r: r.get(PRIMARY) or 0.0)
        strongest[str(k)] = best["label"]
    claim(
        "4",
        f"MARC beats what a recommender team already has for cold items: MARC at L{mid} at each k "
        "against ids only, the text's surface form, genre multi-hot + year (MovieLens), TF-IDF of the "
        "text reduced to k, random vectors of size k (control) and PCA to k of the same layer; it "
        "holds only if MARC beats every one, the strongest included",
        comparisons,
    )
    out[-1]["strongest_baseline"] = strongest

    loras = [r for r in ablations if r["kind"] == "lora"]
    if loras:
        frozen = {r["layer"]: r for r in ablations if _is_marc_default(r)}
        comparisons = [compare(r, frozen[r["layer"]]) for r in loras if r["layer"] in frozen]
        claim(
            "5",
            "Adapting the LLM helps: MARC with LoRA on the top layers against the same MARC (the same "
            "layer and k) on the frozen backbone, from which it starts",
            comparisons,
        )
    if result.get("fixes"):
        pca_row, *variants = result["fixes"]
        claim(
            "6",
            f"A cheap fix makes MARC beat PCA of its own layer: MARC at L{pca_row['layer']} (k="
            f"{pca_row['k']}) as it is and with each fix against {pca_row['label']}",
            [compare(variant, pca_row) for variant in variants],
        )
    _adjust(out)
    return out


def replicate_claims(result: dict[str, Any], compare: Compare) -> list[dict[str, Any]]:
    """Claim 4 on a replicate (another data split): MARC at the served layer against each baseline
    of its trimmed table at each k, Holm-adjusted together."""
    table = result["compression"]
    comparisons = []
    for marc in (r for r in table if _is_marc_default(r)):
        others = [
            r for r in table if r is not marc and r["kind"] != "trained" and r["k"] in (None, marc["k"])
        ]
        comparisons += [compare(marc, other) for other in others]
    out = [
        {
            "claim": "4",
            "statement": f"MARC at L{result['layer']} beats ids only, genre + year, TF-IDF-k and PCA-k of "
            f"its layer on cold items of the split with seed {result['split_seed']}",
            "comparisons": comparisons,
            "context": [],
            "verdict": "",
        }
    ]
    _adjust(out)
    return out


BASELINE_KINDS = ("ids", "surface", "genre_year", "tfidf", "random")
"""Table rows that use no LLM (claim 4 adds PCA of MARC's own layer)."""


def _adjust(entries: list[dict[str, Any]]) -> None:
    """Holm over every (non-context) comparison of the dataset's claims; verdicts from adjusted p."""
    family = [c for entry in entries for c in entry["comparisons"] if c["p"] is not None]
    for c, adjusted in zip(family, holm([c["p"] for c in family]), strict=True):
        c["p_holm"] = round(adjusted, 4)
        significant = adjusted < 1 - LEVEL
        c["verdict"] = (
            "better" if significant and c["difference"] > 0 else "worse" if significant else "no difference"
        )
    for entry in entries:
        entry["verdict"] = _plain(entry["comparisons"])


def format_comparison(c: dict[str, Any]) -> str:
    ci = "no CI" if c["low"] is None else f"[{c['low']:+.4f}, {c['high']:+.4f}]"
    p = "" if c.get("p") is None else f" p={c['p']:.3f}"
    p += f", Holm p={c['p_holm']:.3f}" if c.get("p_holm") is not None else ""
    return f"{c['a']} − {c['b']}: {c['difference']:+.4f} {ci}{p} **{c['verdict']}**"


def claim_lines(entries: Sequence[dict[str, Any]]) -> list[str]:
    """Markdown bullets: each claim, its plain verdict and the comparisons behind it."""
    lines = []
    for entry in entries:
        lines.append(f"**Claim {entry['claim']}: {entry['verdict']}.** {entry['statement']}.")
        if entry.get("strongest_baseline"):
            best = "; ".join(f"k={k}: {label}" for k, label in entry["strongest_baseline"].items())
            lines.append(f"  - strongest baseline by test cold GAUC: {best}")
        lines += [f"  - {format_comparison(c)}" for c in entry["comparisons"]]
        if entry["context"]:
            lines.append("  - context (not part of the verdict):")
            lines += [f"    - {format_comparison(c)}" for c in entry["context"]]
    return lines
