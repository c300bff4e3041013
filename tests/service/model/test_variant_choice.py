"""`MARC_VARIANT=auto` on CPU: int8 or fp32 by what a measurement at load finds faster on this machine,
said in the log and in /v1/models; one measurement per process and artifact, handed by the parent of
`marc serve --workers N` to every worker, so one server never serves two fingerprints."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.multiprocess import MultiProcessCollector

from artifact.loader import load_artifact
from service.model.encoder import load_encoder
from service.model.onnx_session import open_session, ort_session_options
from service.model.variant_choice import (
    INT8_MIN_SPEEDUP,
    MIN_ROUNDS,
    measure_cpu_variant,
    probe_feed,
    remembered,
)
from tests.support.reference import onnx_reference
from tests.support.servers import LiveServer, ServeProcess

TEXTS = ["red running shoes", "organic green tea", "a long text about a vintage brown leather office chair"]


def test_auto_serves_the_variant_measured_faster_and_says_why(
    tiny_artifact: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="service.model.encoder"):
        encoder = load_encoder(tiny_artifact, intra_threads=1)
    choice = encoder.variant_choice
    assert choice.rule == "measured" and choice.rounds >= MIN_ROUNDS
    assert choice.fp32_ms and choice.int8_ms and choice.int8_speedup
    # Whichever it is on this machine, it is the one the measurement points to, and it is served.
    assert choice.variant == ("int8" if choice.int8_speedup >= INT8_MIN_SPEEDUP else "fp32")
    assert encoder.artifact.variant == choice.variant
    np.testing.assert_allclose(
        encoder.embed(TEXTS, 8).vectors, onnx_reference(tiny_artifact, TEXTS, choice.variant), atol=1e-5
    )
    logged = [r.getMessage() for r in caplog.records if "execution provider" in r.getMessage()]
    assert len(logged) == 1 and f"variant {choice.variant} (measured at load: int8 runs" in logged[0]
    assert f"{choice.int8_speedup:.2f}x as fast as fp32" in logged[0]


def test_both_outcomes_follow_the_measurement(tiny_artifact: Path) -> None:
    """Real runs of both sessions each time; the threshold decides which side the same machine is on:
    any measured speed passes a threshold near 0, none passes a huge one."""
    options = ort_session_options(1)
    artifacts = {variant: load_artifact(tiny_artifact, variant) for variant in ("fp32", "int8")}
    sessions = {variant: open_session(a, options=options) for variant, a in artifacts.items()}
    feed = probe_feed(artifacts["fp32"])
    low = measure_cpu_variant(sessions, feed, min_speedup=1e-9, seconds=0.1)
    high = measure_cpu_variant(sessions, feed, min_speedup=1e9, seconds=0.1)
    assert (low.variant, high.variant) == ("int8", "fp32")
    assert low.rounds >= MIN_ROUNDS and high.rounds >= MIN_ROUNDS
    assert "int8 is served from 1000000000.00x" in high.why
    # The same through the loader: the chosen variant's session is what serves.
    assert load_encoder(tiny_artifact, int8_min_speedup=1e-9).artifact.variant == "int8"
    assert load_encoder(tiny_artifact, int8_min_speedup=1e9).artifact.variant == "fp32"
    # 0: int8 wherever the artifact has it, without a measurement.
    preferred = load_encoder(tiny_artifact, int8_min_speedup=0).variant_choice
    assert (preferred.variant, preferred.rule, preferred.rounds) == ("int8", "preferred", 0)


def test_a_process_measures_an_artifact_once(tiny_artifact: Path) -> None:
    first = load_encoder(tiny_artifact, intra_threads=1, int8_min_speedup=1.05).variant_choice
    again = load_encoder(tiny_artifact, intra_threads=1, int8_min_speedup=1.05).variant_choice
    assert again is first  # the same decision (and figures), not a second measurement
    assert first in remembered().values()
    assert load_encoder(tiny_artifact, variant="fp32").variant_choice.rule == "set"


def test_models_endpoint_shows_the_choice_and_the_plan(tiny_artifact: Path) -> None:
    with LiveServer(artifact=tiny_artifact, int8_min_speedup=1e-9) as live, live.client() as client:
        card = client.get("/v1/models").json()["data"][0]
    assert card["variant"] == "int8" and card["variant_choice"]["rule"] == "measured"
    assert card["variant_choice"]["int8_speedup"] > 0 and "measured at load" in card["variant_choice"]["why"]
    assert card["serving"] == {
        "device": "cpu",
        "max_batch_size": 16,
        "max_batch_tokens": 1024,
        "model_runners": 2,
        "workers": 1,
        "io_binding": False,
        "auto": ["max_batch_size", "max_batch_tokens", "model_runners", "workers", "io_binding"],
    }


def _answers_per_worker(metrics_dir: Path) -> dict[str, float]:
    """/v1/models requests each worker process answered with 200, from its own metric file (only that
    route: the start-up's readiness probe is recorded after its answer is sent, so it may land in the
    metrics after the test's first reading)."""
    counts: dict[str, float] = {}
    for path in metrics_dir.glob("histogram_*.db"):
        pid = path.stem.split("_")[-1]
        for family in MultiProcessCollector.merge([str(path)], accumulate=True):
            for sample in family.samples:
                labels = sample.labels
                if (
                    sample.name == "marc_request_duration_seconds_count"
                    and labels["status"] == "200"
                    and labels["route"] == "/v1/models"
                ):
                    counts[pid] = counts.get(pid, 0) + sample.value
    return counts


@pytest.mark.slow
def test_every_worker_serves_the_variant_its_parent_measured(
    tiny_artifact: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers measuring for themselves would time other runs: identical figures from every worker's
    /v1/models mean they all serve the parent's one measurement (and so one fingerprint)."""
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(metrics_dir))
    server = ServeProcess(
        tmp_path / "serve.log", artifact=tiny_artifact, workers=2, int8_min_speedup=INT8_MIN_SPEEDUP
    )
    with server:
        before = _answers_per_worker(metrics_dir)
        cards = []
        for _ in range(60):
            with httpx.Client(base_url=server.url, timeout=10) as client:  # a new connection each time
                cards.append(client.get("/v1/models").json()["data"][0])
        after = _answers_per_worker(metrics_dir)
        log = server.log()
    answered = {pid: after[pid] - before.get(pid, 0) for pid in after}
    assert len(answered) == 2 and min(answered.values()) > 0, answered  # both workers answered
    assert sum(answered.values()) == len(cards)
    assert len({(c["fingerprint"], tuple(sorted(c["variant_choice"].items()))) for c in cards}) == 1
    choice = cards[0]["variant_choice"]
    assert choice["rule"] == "measured" and cards[0]["variant"] == choice["variant"]
    # The parent and both workers each log the load, all with the parent's one measurement.
    loads = [line for line in log.splitlines() if "execution provider" in line]
    assert len(loads) == 3 and all(choice["why"] in line for line in loads), loads
