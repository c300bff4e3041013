"""Provider-aware settings (`Settings.serving_plan`): each "auto" batching and process setting resolved
for the provider the model came up on; the padded-token bound of a run (MARC_MAX_BATCH_TOKENS) driven
past its limit; IO binding giving the same vectors as plain runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from service.model.encoder import load_encoder
from service.settings import PROVIDER_DEFAULTS, Settings, available_cpus
from tests.support.reference import onnx_reference
from tests.support.servers import LiveServer

# Lengths from 1 to ~30 tokens, and one longer than any bound below.
TEXTS = [(f"item {i}: " + "red leather sofa with oak legs " * (i % 5)).strip() for i in range(23)]
LONG = ("a very long catalogue text about a vintage brown leather office chair with armrests " * 3).strip()


def test_auto_settings_resolve_per_provider_and_set_ones_win(tmp_path: Path) -> None:
    auto = Settings(artifact=tmp_path)
    cpu, cuda = auto.serving_plan("cpu"), auto.serving_plan("cuda")
    assert (cpu.max_batch_size, cpu.max_batch_tokens, cpu.model_runners, cpu.workers, cpu.io_binding) == (
        16,
        1024,
        2,
        1,
        False,
    )
    assert (cuda.max_batch_size, cuda.max_batch_tokens, cuda.model_runners, cuda.io_binding) == (
        256,
        16384,
        1,
        True,
    )
    assert cuda.workers == max(1, min(PROVIDER_DEFAULTS["cuda"].max_workers, available_cpus() // 2))
    assert (
        set(cpu.auto)
        == set(cuda.auto)
        == {
            "max_batch_size",
            "max_batch_tokens",
            "model_runners",
            "workers",
            "io_binding",
        }
    )
    set_ = Settings(artifact=tmp_path, max_batch_size=64, workers=3, io_binding="off", model_runners="auto")
    plan = set_.serving_plan("cuda")
    assert (plan.max_batch_size, plan.workers, plan.io_binding, plan.model_runners) == (64, 3, False, 1)
    assert plan.auto == ("max_batch_tokens", "model_runners")
    assert "max_batch_size 64" in plan.describe() and "(max_batch_tokens, model_runners auto for cuda)" in (
        plan.describe()
    )


def test_auto_settings_read_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MARC_MAX_BATCH_SIZE", "auto")
    monkeypatch.setenv("MARC_MAX_BATCH_TOKENS", "4096")
    monkeypatch.setenv("MARC_WORKERS", "2")
    settings = Settings(artifact=tmp_path)
    assert (settings.max_batch_size, settings.max_batch_tokens, settings.workers) == ("auto", 4096, 2)
    for name, bad in (("MARC_MAX_BATCH_SIZE", "0"), ("MARC_MAX_BATCH_TOKENS", "big"), ("MARC_WORKERS", "65")):
        monkeypatch.setenv(name, bad)
        with pytest.raises(ValidationError, match=name.removeprefix("MARC_").lower()):
            Settings(artifact=tmp_path)
        monkeypatch.delenv(name)


def test_runs_never_pass_the_token_bound_and_vectors_do_not_change(tiny_artifact: Path) -> None:
    encoder = load_encoder(tiny_artifact, variant="fp32")
    texts = [*TEXTS, LONG]
    unbounded = encoder.embed(texts, 16).vectors
    for bound in (12, 40, 100, 10_000):
        prepared = encoder.prepare(texts, 16, max_batch_tokens=bound)
        assert sorted(row for rows, _, _ in prepared.runs for row in rows) == list(range(len(texts)))
        for rows, input_ids, _ in prepared.runs:
            padded = input_ids.shape[0] * input_ids.shape[1]
            assert len(rows) <= 16
            assert padded <= bound or len(rows) == 1, (bound, input_ids.shape)  # a long row runs alone
        np.testing.assert_allclose(encoder.run(prepared).vectors, unbounded, rtol=0, atol=1e-5)
    # Past the bound: the long text alone is more than 12 padded tokens, and so are most pairs.
    tight = encoder.prepare(texts, 16, max_batch_tokens=12)
    assert len(tight.runs) > len(encoder.prepare(texts, 16, max_batch_tokens=10_000).runs) == 2


@pytest.mark.parametrize("variant", ["fp32", "int8", "fp16"])
def test_io_binding_gives_the_same_vectors_as_plain_runs(tiny_artifact: Path, variant: str) -> None:
    encoder = load_encoder(tiny_artifact, variant=variant)
    texts = [*TEXTS, LONG]
    plain = encoder.embed(texts, 5).vectors
    encoder.io_binding = True
    bound = encoder.embed(texts, 5).vectors
    alone = np.concatenate([encoder.embed([text], 1).vectors for text in texts[:4]])
    np.testing.assert_array_equal(bound, plain)  # the same kernels: the same bits
    np.testing.assert_allclose(alone, plain[:4], rtol=0, atol=1e-4)


def test_the_service_runs_with_the_resolved_plan(tiny_artifact: Path) -> None:
    """The settings reach the batcher and the encoder: 24 new texts in runs of at most 4 rows are 6
    runs; bounded to 40 padded tokens as well, every text over 20 tokens runs alone."""
    texts = [*TEXTS, LONG]
    encodings = load_encoder(tiny_artifact).artifact.tokenizer.encode_batch(texts)
    alone = sum(sum(e.attention_mask) > 20 for e in encodings)
    assert alone > len(texts) / 4  # more than the row bound alone would make
    settings = {"artifact": tiny_artifact, "max_batch_tokens": 40, "io_binding": "on", "max_batch_size": 4}
    with LiveServer(**settings) as live, live.client() as client:
        served = live.runtime.models.default
        assert (served.plan.max_batch_size, served.plan.max_batch_tokens) == (4, 40)
        assert served.encoder.io_binding is True
        body = client.post("/v1/embed", json={"items": [{"text": t} for t in texts]}).json()
        runs = live.metric("marc_batch_size_count")
    vectors = np.array([row["embedding"] for row in body["data"]], dtype=np.float32)
    np.testing.assert_allclose(vectors, onnx_reference(tiny_artifact, texts), rtol=0, atol=1e-5)
    assert runs >= alone, (alone, runs)


def test_docs_table_of_provider_defaults_is_the_code(tmp_path: Path) -> None:
    """docs/gpu.md's table, "Settings that depend on the provider", states what `auto` resolves to."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "gpu.md").read_text()
    rows = {
        cells[0].strip("` "): (cells[1].strip(), cells[2].strip())
        for line in doc.splitlines()
        if line.startswith("| `MARC_") and len(cells := line.strip("|").split("|")) >= 3
    }
    settings = Settings(artifact=tmp_path)
    cpu, cuda = settings.serving_plan("cpu"), settings.serving_plan("cuda")
    shown = {True: "on", False: "off"}
    for name in ("max_batch_size", "max_batch_tokens", "model_runners"):
        assert rows[f"MARC_{name.upper()}"] == (str(getattr(cpu, name)), str(getattr(cuda, name))), name
    assert rows["MARC_IO_BINDING"] == (shown[cpu.io_binding], shown[cuda.io_binding])
    cpu_workers, cuda_workers = rows["MARC_WORKERS"]
    assert cpu_workers == str(cpu.workers)
    assert cuda_workers == f"half the CPUs, at most {PROVIDER_DEFAULTS['cuda'].max_workers}"
