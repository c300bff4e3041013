"""`make soak`'s tool: its criteria on made-up samples (each can fail), and a run of well under a minute
on the tiny artifacts (the same code as the 20-minute soak: workers, reloads, Redis restarts and a pause,
every client kind) whose report has the documented shape and passes the functional criteria."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from loadtest import soak
from loadtest.soak_report import (
    Bounds,
    error_criteria,
    fd_criterion,
    ids_criterion,
    rss_criterion,
    vector_criterion,
)
from loadtest.soak_traffic import ENCODINGS, IdsSeen, Outcome, Returned, decode
from service.api.encodings import encode_vector

BOUNDS = Bounds(warmup_s=10, window_s=20, rss_bound=0.05, fd_bound=10, grace_s=2)


def _samples(rss: list[float], fds: list[int]) -> list[dict]:
    return [
        {"at_s": 10.0 * i, "processes": {"worker 1": {"rss_mb": r, "fds": f}}}
        for i, (r, f) in enumerate(zip(rss, fds, strict=True))
    ]


def test_rss_and_fd_criteria_hold_flat_series_and_catch_creep() -> None:
    # Warm-up (t < 10 s) is ignored; windows of 20 s: [10, 30), [30, 50), [50, 70).
    flat = _samples([500, 200, 260, 205, 262, 208, 261], [90, 40, 48, 41, 49, 42, 50])
    assert rss_criterion(flat, BOUNDS)["ok"] and fd_criterion(flat, BOUNDS)["ok"]
    creeping = _samples([200, 200, 260, 210, 275, 220, 290], [40, 40, 45, 46, 48, 49, 51])
    result = rss_criterion(creeping, BOUNDS)
    assert not result["ok"] and result["processes"]["worker 1"]["window_peaks_mb"] == [260, 275, 290]
    leaking = _samples([200] * 7, [40, 40, 42, 44, 46, 48, 51])
    assert not fd_criterion(leaking, BOUNDS)["ok"]


def test_errors_count_only_when_documented_and_during_an_outage() -> None:
    outage = [{"name": "redis restart", "at_s": 100.0, "until_s": 105.0}]
    lookup_down = Outcome(103, "/v1/items/lookup", "lookup", 0.01, 503, "503 cache_unavailable")
    hung_up = Outcome(50, "/v1/embed", "disconnect", 0.0, None, "hung up by design")
    answered, errors = error_criteria([lookup_down, hung_up], outage, BOUNDS)
    assert answered["ok"] and errors["ok"] and errors["explained_during_outages"] == 1
    late = Outcome(108, "/v1/items/lookup", "lookup", 0.01, 503, "503 cache_unavailable")  # after the grace
    embed_down = Outcome(103, "/v1/embed", "hit", 0.01, 503, "503 cache_unavailable")  # embed must not fail
    reset = Outcome(20, "/v1/embed", "hit", 0.01, None, "ReadError")
    answered, errors = error_criteria([late, embed_down, reset], outage, BOUNDS)
    assert not answered["ok"] and answered["without_answer"] == 1
    assert errors["unexplained"] == {
        "/v1/items/lookup 503 cache_unavailable": 1,
        "/v1/embed 503 cache_unavailable": 1,
        "/v1/embed ReadError": 1,
    }
    assert errors["unexplained_at_s"] == [108, 103, 20]


def test_an_id_unknown_once_stored_fails_unless_an_outage_explains_it() -> None:
    outage = [{"name": "redis restart", "at_s": 100.0, "until_s": 105.0}]
    stored = [
        IdsSeen(50, 50.1, "f", ("a", "b")),
        IdsSeen(108, 108.1, "f", ("c",)),
        IdsSeen(120, 120.1, "g", ("d",)),
    ]
    explained = [
        IdsSeen(106, 106.1, "f", ("a", "b")),  # stored before the restart: the new Redis is empty
        IdsSeen(109, 109.1, "f", ("c",)),  # stored during the grace after it: its write may be lost
        IdsSeen(50.5, 50.6, "f", ("a",)),  # asked before its write could settle
        IdsSeen(130, 130.1, "f", ("d",)),  # stored by another model (its own key space)
        IdsSeen(130, 130.1, "f", ("e",)),  # never stored
    ]
    result = ids_criterion(stored, explained, outage, BOUNDS)
    assert result["ok"] and result["unknown_ids"] == 6 and result["unknown_once_stored"] == 0
    lost = [IdsSeen(90, 90.1, "f", ("a",)), IdsSeen(125, 125.1, "g", ("d",))]  # stored, no outage since
    result = ids_criterion(stored, lost, outage, BOUNDS)
    assert not result["ok"] and result["unknown_once_stored"] == 2
    assert result["unknown_once_stored_at_s"] == [90, 125]


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_vectors_are_checked_against_their_fingerprint_in_every_encoding(encoding: str) -> None:
    rng = np.random.default_rng(0)
    reference = rng.normal(size=16).astype(np.float32)
    other = rng.normal(size=16).astype(np.float32)
    references = {"a": {"text": reference}, "b": {"text": other}}

    def returned(vector: np.ndarray, fingerprint: str | None, dims: int = 16) -> Returned:
        embedding, scale = encode_vector(vector[:dims].copy(), encoding)  # type: ignore[arg-type]
        wire = embedding.tolist() if isinstance(embedding, np.ndarray) else embedding
        scale = None if scale is None else float(scale)
        return Returned(fingerprint, "text", encoding, dims, decode(wire, encoding, dims, scale), scale)

    batch_rounding = reference + np.float32(1e-6)
    good = [returned(batch_rounding, "a"), returned(reference, "a", dims=8), returned(other, None)]
    assert vector_criterion(good, references)["ok"]
    assert not vector_criterion([returned(other, "a")], references)["ok"]  # another model's vector


@pytest.mark.slow
def test_a_short_soak_writes_its_report_and_passes_the_functional_criteria(
    tiny_artifact: Path, tiny_artifact_other: Path, tmp_path: Path
) -> None:
    out = tmp_path / "soak"
    args = ["--artifact", str(tiny_artifact), "--other", str(tiny_artifact_other), "--minutes", "0.6"]
    args += ["--reload-every", "10", "--sample-every", "2", "--warmup", "8", "--outage", "1.5"]
    # Grace 6 s: with 3 s, 2 of 6 runs saw one lookup 503 after a Redis outage's grace. The likely cause,
    # stale pooled connections each failing one later call, is fixed (RELIABILITY.md, "Soak"); the grace
    # was not lowered again untested (the report's unexplained_at_s says when, for the next one).
    args += ["--grace", "6", "--rows-every", "6", "--rate-scale", "0.5", "--out", str(out)]
    # Redis calls get 1 s: the suite's other files load the same 2 cores (a lookup's 3 x 100 ms timeouts
    # there once answered 503 outside any outage: CPU starvation, not the soak's functional criteria).
    args += ["--cache-timeout-ms", "1000"]
    soak.main(args)
    report = json.loads((out / "soak.json").read_text())
    assert (out / "soak.png").stat().st_size > 10_000
    table = (out / "soak.md").read_text()
    assert "| t (min) | RSS parent MiB |" in table and "| rss flat |" in table
    names = [e["name"] for e in report["events"]]
    assert (
        names.count("reload") == 3 and names.count("redis restart") == 2 and names.count("redis pause") == 1
    )
    assert len(report["samples"]) == 18
    sample = report["samples"][-1]
    assert {"parent", "worker"} <= {name.split()[0] for name in sample["processes"]}
    assert {"/v1/embed", "/v1/embeddings", "/v1/items/lookup"} <= set(sample["latency"])
    assert all(
        report["totals"]["by_kind"][kind] > 0
        for kind in ("hit", "miss", "openai", "lookup", "slow", "disconnect")
    )
    criteria = report["verdict"]["criteria"]
    assert set(criteria) == {
        "rss_flat",
        "fds_flat",
        "vectors_equal_reference",
        "every_request_answered",
        "errors_only_documented_during_outages",
        "ids_known_once_stored",
        "reloads_ok",
    }
    # A run of seconds says nothing about memory over hours; the rest must hold already.
    for name in (
        "vectors_equal_reference",
        "every_request_answered",
        "errors_only_documented_during_outages",
        "ids_known_once_stored",
        "reloads_ok",
    ):
        assert criteria[name]["ok"], (name, criteria[name])
    assert criteria["vectors_equal_reference"]["checked"] > 100
