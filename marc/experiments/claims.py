"""The claims check: each claim as paired comparisons of two table rows (test cold GAUC difference, its
95% paired two-level bootstrap CI over items and seeds, its bootstrap p-value), and a plain verdict
per claim and dataset. Each claim has ONE primary comparison, declared here before any result is
seen (at the served k; for claim 4 against the strongest baseline); the primaries of a dataset's
claims are one family, Holm-adjusted together (`marc.stats.holm`), and a claim holds only when its
primary says "better" at an adjusted p below 1 - LEVEL. The claim's other comparisons and its context
are reported with their own, unadjusted CI and decide nothing: with 1,000 bootstrap replicates
(smallest p 0.002) a Holm family of ~30 comparisons could never reach 0.05."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from marc.experiments.intervals import CLAIM_METRIC
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


PLAIN = {
    "better": "holds",
    "worse": "fails (the opposite holds)",
    "no difference": "not shown (no difference beyond noise)",
    "n/a": "not measurable (too few test rows for a CI)",
}
"""A claim's word on one dataset, from its primary comparison's verdict."""


def _claim(
    name: str,
    statement: str,
    primary: dict[str, Any],
    others: Sequence[dict[str, Any]] = (),
    context: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """A claim: its name and statement, the one comparison declared to decide it (``primary``),
    its other comparisons and context (unadjusted: they inform and decide nothing)."""
    return {
        "claim": name,
        "statement": statement,
        "primary": primary,
        "comparisons": [c for c in others if c is not primary],
        "context": list(context),
        "verdict": "",
    }


def _strongest(baselines: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The baseline with the best test cold GAUC: beating it is the hardest test of MARC, so picking
    it on test data can only make the claim harder to pass."""
    return max(baselines, key=lambda r: r.get(CLAIM_METRIC) or 0.0)


def claims(result: dict[str, Any], final: int, compare: Compare, k: int) -> list[dict[str, Any]]:
    """Per claim: its statement, the primary comparison that decides it (at the served ``k``; fixed
    before any result is seen), its other comparisons and the plain verdict."""
    mid = result["mid_layer"]
    sweep, table, ablations = result["sweep"], result["compression"], result["ablations"]
    dims = sorted({r["k"] for r in table if r["k"]})
    if k not in dims:
        raise ValueError(f"the claims are decided at k={k}, but the table has k={dims}")
    out: list[dict[str, Any]] = []

    by_k = {d: compare(_marc(table, mid, d), _marc(table, final, d)) for d in dims}
    others = [
        compare(
            find_record(sweep, kind="pca_std", layer=mid), find_record(sweep, kind="pca_std", layer=final)
        )
    ]
    lora_by_layer = {r["layer"]: r for r in ablations if r["kind"] == "lora"}
    if mid in lora_by_layer and final in lora_by_layer:
        others.append(compare(lora_by_layer[mid], lora_by_layer[final]))
    statement = (
        f"Middle layers beat the final layer: MARC at the chosen mid layer L{mid} (by validation) "
        f"against MARC at the final layer L{final} at k={k}; also PCA of the standardised state, the "
        "other k and MARC with LoRA"
    )
    out.append(_claim("1", statement, by_k[k], [*by_k.values(), *others]))

    comparisons = {
        (d, kind): compare(_marc(table, mid, d), find_record(table, kind=kind, layer=final, k=d))
        for d in dims
        for kind in ("pca_std", "pca")
    }
    statement = (
        f"Compressing the final layer is suboptimal: MARC at L{mid} against PCA of the final layer's "
        f"standardised state at k={k}; also raw PCA and the other k (C + A on the final layer: claim 1)"
    )
    out.append(_claim("2", statement, comparisons[(k, "pca_std")], list(comparisons.values())))

    full = find_record(table, kind="full", layer=final)
    by_k = {d: compare(_marc(table, mid, d), full) for d in dims}
    default = next(r for r in ablations if _is_marc_default(r))
    context = [
        compare(default, r)
        for r in ablations
        if r is not default and r["kind"] == "trained" and r["layer"] == mid
    ]
    context += [
        compare(_marc(table, mid, d), find_record(table, kind="pca_std", layer=mid, k=d)) for d in dims
    ]
    context += [compare(_marc(table, mid, d), find_record(table, kind="surface")) for d in dims[-1:]]
    context.append(compare(find_record(table, kind="surface"), find_record(table, kind="ids")))
    statement = (
        f"Small MARC vectors keep or beat the full representation: MARC at L{mid} at k={k} against the "
        f"final layer's full state ({full['dim']} floats); also the other k; context: full MARC against "
        "each ablation, against PCA of the same layer, against the text's surface form"
    )
    out.append(_claim("3", statement, by_k[k], list(by_k.values()), context))

    comparisons, strongest = {}, {}
    for d in dims:
        marc = _marc(table, mid, d)
        baselines = [r for r in table if r["kind"] in BASELINE_KINDS and r["k"] in (None, d)]
        baselines.append(find_record(table, kind="pca_std", layer=mid, k=d))
        strongest[str(d)] = _strongest(baselines)["label"]
        comparisons |= {(d, baseline["label"]): compare(marc, baseline) for baseline in baselines}
    statement = (
        f"MARC beats what a recommender team already has for cold items: MARC at L{mid} at k={k} "
        "against the strongest of ids only, the text's surface form, genre multi-hot + year "
        "(MovieLens), TF-IDF of the text reduced to k, random vectors of size k (control) and PCA to k "
        "of the same layer (by test cold GAUC); also each of them and the other k"
    )
    primary = comparisons[(k, strongest[str(k)])]
    out.append(_claim("4", statement, primary, list(comparisons.values())))
    out[-1]["strongest_baseline"] = strongest

    loras = [r for r in ablations if r["kind"] == "lora"]
    frozen = {r["layer"]: r for r in ablations if _is_marc_default(r)}
    comparisons = [compare(r, frozen[r["layer"]]) for r in loras if r["layer"] in frozen]
    if comparisons:  # the first LoRA row is at the served layer (`marc.experiments.plan.ablation_rows`)
        statement = (
            f"Adapting the LLM helps: MARC with LoRA on the top layers at L{loras[0]['layer']} against "
            "the same MARC on the frozen backbone, from which it starts; also at the final layer"
        )
        out.append(_claim("5", statement, comparisons[0], comparisons))
    if result.get("fixes"):
        pca_row, as_it_is, *fixes = result["fixes"]
        chosen = max(fixes, key=lambda r: r.get("valid_gauc_cold") or 0.0)
        statement = (
            f"A cheap fix makes MARC beat PCA of its own layer: the fix with the best validation cold "
            f"GAUC ({chosen['label']}) at L{pca_row['layer']} (k={pca_row['k']}) against "
            f"{pca_row['label']}; also MARC as it is and the other fixes"
        )
        comparisons = [compare(variant, pca_row) for variant in (as_it_is, *fixes)]
        primary = comparisons[1 + fixes.index(chosen)]
        out.append(_claim("6", statement, primary, comparisons))
    _adjust(out)
    return out


def replicate_claims(result: dict[str, Any], compare: Compare) -> list[dict[str, Any]]:
    """Claim 4 on a replicate (another data split): MARC at the served layer against the strongest
    baseline of its trimmed table (primary), and against each of them."""
    table = result["compression"]
    marc = next(r for r in table if _is_marc_default(r))
    baselines = [r for r in table if r is not marc and r["k"] in (None, marc["k"])]
    best = _strongest(baselines)
    comparisons = [compare(marc, baseline) for baseline in baselines]
    statement = (
        f"MARC at L{result['layer']} beats the strongest of its table's baselines "
        f"({', '.join(b['label'] for b in baselines)}) on cold items of the split with seed "
        f"{result['split_seed']}; also each of them"
    )
    out = [_claim("4", statement, comparisons[baselines.index(best)], comparisons)]
    out[0]["strongest_baseline"] = {str(marc["k"]): best["label"]}
    _adjust(out)
    return out


BASELINE_KINDS = ("ids", "surface", "genre_year", "tfidf", "random")
"""Table rows that use no LLM (claim 4 adds PCA of MARC's own layer)."""


def _adjust(entries: list[dict[str, Any]]) -> None:
    """Holm over the primary comparisons of the dataset's claims (one per claim); each primary's
    verdict from its adjusted p, and each claim's verdict from its primary. The other comparisons
    keep their own CI's verdict (unadjusted)."""
    family = [entry["primary"] for entry in entries if entry["primary"]["p"] is not None]
    for c, adjusted in zip(family, holm([c["p"] for c in family]), strict=True):
        c["p_holm"] = round(adjusted, 4)
        significant = adjusted < 1 - LEVEL
        c["verdict"] = (
            "better" if significant and c["difference"] > 0 else "worse" if significant else "no difference"
        )
    for entry in entries:
        entry["verdict"] = PLAIN[entry["primary"]["verdict"]]


def format_comparison(c: dict[str, Any]) -> str:
    ci = "no CI" if c["low"] is None else f"[{c['low']:+.4f}, {c['high']:+.4f}]"
    p = "" if c.get("p") is None else f" p={c['p']:.3f}"
    p += f", Holm p={c['p_holm']:.3f}" if c.get("p_holm") is not None else ""
    return f"{c['a']} − {c['b']}: {c['difference']:+.4f} {ci}{p} **{c['verdict']}**"


def claim_lines(entries: Sequence[dict[str, Any]]) -> list[str]:
    """Markdown bullets: each claim, its verdict, the primary comparison that decides it and the
    other comparisons behind it."""
    lines = []
    for entry in entries:
        lines.append(f"**Claim {entry['claim']}: {entry['verdict']}.** {entry['statement']}.")
        if entry.get("strongest_baseline"):
            best = "; ".join(f"k={k}: {label}" for k, label in entry["strongest_baseline"].items())
            lines.append(f"  - strongest baseline by test cold GAUC: {best}")
        lines.append(f"  - primary: {format_comparison(entry['primary'])}")
        for title, key in (("other comparisons", "comparisons"), ("context", "context")):
            if entry[key]:
                lines.append(f"  - {title} (unadjusted, not part of the verdict):")
                lines += [f"    - {format_comparison(c)}" for c in entry[key]]
    return lines
