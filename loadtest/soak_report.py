"""The soak's verdict and report (`loadtest.soak`): the pass criteria over the samples, the outcomes and
the vectors checked against references, then JSON, a markdown table and a PNG of RSS and p99 over time.

Criteria, after the warm-up:
* RSS flat: per process, the peak of every later window of two reload intervals (one model and back)
  within ``rss_bound`` (5%) of the first window's peak (a reload swaps models, so RSS moves within a
  window; creeping shows as window peaks that keep rising);
* fds flat: per process, at most ``fd_bound`` (10) more open file descriptors than at the first sample;
* every returned vector equals the reference of its fingerprint (within the float tolerance of another
  batch, plus the encoding's own rounding);
* every request has an answer (a transport error is a request without one; the disconnecting client's
  hang-ups are not requests that wanted one);
* errors only of the documented kinds and only while Redis is down (`DOCUMENTED_OUTAGE_ERRORS`, in an
  outage window or ``grace_s`` after it);
* every id is known to lookups once stored: a lookup may find an id unknown only if no hit stored it
  (answered by the same model) at least ``settle_s`` before the lookup with no Redis outage, or its
  grace, since that hit was sent (a restarted Redis is empty; a write during an outage is lost);
* every reload succeeded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from loadtest.soak_sampler import error_kind
from loadtest.soak_traffic import IdsSeen, Outcome, Returned

# What a client may see while Redis is down (docs/api.md): a lookup has nothing else to look in.
DOCUMENTED_OUTAGE_ERRORS = frozenset({"/v1/items/lookup 503 cache_unavailable"})
FLOAT_TOLERANCE = 1e-3  # times max(1, max |component|): another batch's float rounding, with room


@dataclass(frozen=True)
class Bounds:
    warmup_s: float
    window_s: float  # two reload intervals
    rss_bound: float = 0.05
    fd_bound: int = 10
    grace_s: float = 5.0
    settle_s: float = 2.0  # a hit's queued write reaches Redis within this (it is flushed at once)


def _after_warmup(samples: list[dict[str, Any]], bounds: Bounds) -> list[dict[str, Any]]:
    return [s for s in samples if s["at_s"] >= bounds.warmup_s]


def rss_criterion(samples: list[dict[str, Any]], bounds: Bounds) -> dict[str, Any]:
    kept = _after_warmup(samples, bounds)
    per_process: dict[str, Any] = {}
    ok = bool(kept)
    for name in sorted({name for s in kept for name in s["processes"]}):
        peaks: dict[int, float] = {}
        for s in kept:
            if name in s["processes"]:
                window = int((s["at_s"] - bounds.warmup_s) // bounds.window_s)
                peaks[window] = max(peaks.get(window, 0.0), s["processes"][name]["rss_mb"])
        windows = [peaks[w] for w in sorted(peaks)]
        growth = max(windows[1:], default=windows[0]) / windows[0] - 1
        per_process[name] = {"window_peaks_mb": [round(p, 1) for p in windows], "growth": round(growth, 4)}
        ok = ok and growth <= bounds.rss_bound
    return {
        "ok": ok,
        "bound": f"window peaks within +{bounds.rss_bound:.0%} of the first",
        "processes": per_process,
    }


def fd_criterion(samples: list[dict[str, Any]], bounds: Bounds) -> dict[str, Any]:
    kept = _after_warmup(samples, bounds)
    per_process: dict[str, Any] = {}
    ok = bool(kept)
    for name in sorted({name for s in kept for name in s["processes"]}):
        fds = [s["processes"][name]["fds"] for s in kept if name in s["processes"]]
        per_process[name] = {"first": fds[0], "max": max(fds), "last": fds[-1]}
        ok = ok and max(fds) <= fds[0] + bounds.fd_bound
    return {"ok": ok, "bound": f"at most +{bounds.fd_bound} over the first sample", "processes": per_process}


def error_criteria(
    outcomes: list[Outcome], outages: list[dict[str, Any]], bounds: Bounds
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(every request answered, errors only documented and only while Redis is down)."""
    unanswered = [o for o in outcomes if o.status is None and o.kind != "disconnect"]
    explained, unexplained = 0, {}
    unexplained_at: list[float] = []  # when (s into the run), to set beside the events
    for outcome in outcomes:
        kind = error_kind(outcome)
        if kind is None:
            continue
        in_outage = any(e["at_s"] <= outcome.at <= e["until_s"] + bounds.grace_s for e in outages)
        if in_outage and kind in DOCUMENTED_OUTAGE_ERRORS:
            explained += 1
        else:
            unexplained[kind] = unexplained.get(kind, 0) + 1
            unexplained_at.append(round(outcome.at, 2))
    answered = {"ok": not unanswered, "requests": len(outcomes), "without_answer": len(unanswered)}
    errors = {
        "ok": not unexplained,
        "explained_during_outages": explained,
        "unexplained": unexplained,
        "unexplained_at_s": unexplained_at[:20],
    }
    return answered, errors


def ids_criterion(
    stored: list[IdsSeen], unknown: list[IdsSeen], outages: list[dict[str, Any]], bounds: Bounds
) -> dict[str, Any]:
    """Ids a lookup found unknown although a hit had stored them since the last outage (see the module
    docstring): a lost id, outside what the documented outages explain."""
    stores: dict[tuple[str, str], list[IdsSeen]] = {}
    for hit in stored:
        for item_id in hit.ids:
            stores.setdefault((hit.fingerprint, item_id), []).append(hit)

    def outage_between(start: float, end: float) -> bool:
        return any(e["at_s"] <= end and e["until_s"] + bounds.grace_s >= start for e in outages)

    def lost(item_id: str, lookup: IdsSeen) -> bool:
        return any(
            hit.finished + bounds.settle_s <= lookup.sent and not outage_between(hit.sent, lookup.sent)
            for hit in stores.get((lookup.fingerprint, item_id), [])
        )

    unexpected = [(lookup.sent, i) for lookup in unknown for i in lookup.ids if lost(i, lookup)]
    return {
        "ok": not unexpected,
        "unknown_ids": sum(len(lookup.ids) for lookup in unknown),
        "unknown_once_stored": len(unexpected),
        "unknown_once_stored_at_s": [round(at, 2) for at, _ in unexpected[:20]],
    }


def vector_criterion(
    returned: list[Returned], references: dict[str, dict[str, np.ndarray]]
) -> dict[str, Any]:
    """Each returned vector against its fingerprint's reference (for /v1/embeddings, which names no
    fingerprint, against any served model's)."""
    mismatches: list[str] = []
    for item in returned:
        fingerprints = [item.fingerprint] if item.fingerprint is not None else list(references)
        if not any(_matches(item, references[f][item.text][: item.dims]) for f in fingerprints):
            mismatches.append(f"{item.fingerprint} {item.encoding} dims {item.dims}: {item.text!r}")
    return {"ok": bool(returned) and not mismatches, "checked": len(returned), "mismatches": mismatches[:20]}


def _matches(item: Returned, reference: np.ndarray) -> bool:
    if item.vector.shape != reference.shape:
        return False
    tolerance = FLOAT_TOLERANCE * max(1.0, float(np.abs(reference).max()))
    if item.encoding == "binary":
        sure = np.abs(reference) > tolerance
        return bool(np.array_equal(item.vector[sure], np.where(reference[sure] > 0, 1.0, -1.0)))
    allowed = np.full(reference.shape, tolerance, np.float32)
    if item.encoding == "float16":
        allowed += np.abs(reference) * 2.0**-10
    elif item.encoding == "int8":
        allowed += 0.6 * float(item.scale or 0.0)
    return bool(np.all(np.abs(item.vector - reference) <= allowed))


def verdict(
    samples: list[dict[str, Any]],
    outcomes: list[Outcome],
    outages: list[dict[str, Any]],
    vectors: dict[str, Any],
    ids: dict[str, Any],
    reloads: dict[str, Any],
    bounds: Bounds,
) -> dict[str, Any]:
    answered, errors = error_criteria(outcomes, outages, bounds)
    criteria = {
        "rss_flat": rss_criterion(samples, bounds),
        "fds_flat": fd_criterion(samples, bounds),
        "vectors_equal_reference": vectors,
        "every_request_answered": answered,
        "errors_only_documented_during_outages": errors,
        "ids_known_once_stored": ids,
        "reloads_ok": reloads,
    }
    return {"passed": all(c["ok"] for c in criteria.values()), "criteria": criteria}


# --- writing ------------------------------------------------------------------------------------------


def markdown(report: dict[str, Any], rows_every_s: float) -> str:
    """A table of the samples (one row per ``rows_every_s``) and one of the criteria."""
    samples = report["samples"]
    processes = sorted({name for s in samples for name in s["processes"]}, key=_process_order)
    routes = sorted({route for s in samples for route in s["latency"]})
    head = ["t (min)", *(f"RSS {p} MiB" for p in processes), "fds (all)"]
    head += [f"p99 {r} ms" for r in routes] + ["requests", "errors", "queue depth", "load 1m"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    next_row = 0.0
    for s in samples:
        if s["at_s"] + 1e-9 < next_row and s is not samples[-1]:
            continue
        next_row = s["at_s"] + rows_every_s
        cells = [f"{s['at_s'] / 60:.1f}"]
        cells += [f"{s['processes'][p]['rss_mb']:.0f}" if p in s["processes"] else "-" for p in processes]
        cells.append(str(sum(p["fds"] for p in s["processes"].values())))
        cells += [f"{s['latency'][r]['p99_ms']:.0f}" if r in s["latency"] else "-" for r in routes]
        errors = ", ".join(f"{k}: {v}" for k, v in sorted(s["errors"].items())) or "0"
        depth = "-" if s["queue_depth"] is None else f"{s['queue_depth']:.0f}"
        cells += [str(s["requests"]), errors, depth, f"{s['load_1m']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| criterion | result | figures |", "|---|---|---|"]
    for name, criterion in report["verdict"]["criteria"].items():
        figures = {k: v for k, v in criterion.items() if k != "ok"}
        lines.append(
            f"| {name.replace('_', ' ')} | {'pass' if criterion['ok'] else 'FAIL'} | {_brief(figures)} |"
        )
    return "\n".join(lines) + "\n"


def _process_order(name: str) -> tuple[int, str]:
    return (0 if name == "parent" else 1 if name.startswith("worker") else 2, name)


def _brief(figures: dict[str, Any]) -> str:
    text = json.dumps(figures, sort_keys=True)
    return text if len(text) <= 400 else text[:400] + "..."


def plot(report: dict[str, Any], path: Path) -> None:
    """RSS of every process and p99 per route over time, with the reloads and Redis outages marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = report["samples"]
    minutes = [s["at_s"] / 60 for s in samples]
    fig, (rss_axis, p99_axis) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    for name in sorted({n for s in samples for n in s["processes"]}, key=_process_order):
        values = [s["processes"].get(name, {}).get("rss_mb", np.nan) for s in samples]
        rss_axis.plot(minutes, values, label=name)
    for route in sorted({r for s in samples for r in s["latency"]}):
        values = [s["latency"].get(route, {}).get("p99_ms", np.nan) for s in samples]
        p99_axis.plot(minutes, values, label=route)
    for axis in (rss_axis, p99_axis):
        for event in report["events"]:
            if event["name"] == "reload":
                axis.axvline(event["at_s"] / 60, color="grey", linestyle=":", linewidth=0.8)
            else:
                axis.axvspan(event["at_s"] / 60, event["until_s"] / 60, color="red", alpha=0.15)
        axis.legend(fontsize=7, loc="upper left")
        axis.grid(alpha=0.3)
    rss_axis.set_ylabel("RSS (MiB)")
    p99_axis.set_ylabel("p99 per route (ms, per sample)")
    p99_axis.set_yscale("log")
    p99_axis.set_xlabel("minutes (dotted: reloads; red: Redis restarted or paused)")
    fig.suptitle(report["title"], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(report: dict[str, Any], out: Path, rows_every_s: float) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "soak.json", "markdown": out / "soak.md", "png": out / "soak.png"}
    paths["json"].write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    paths["markdown"].write_text(f"{report['title']}\n\n" + markdown(report, rows_every_s))
    plot(report, paths["png"])
    return paths
