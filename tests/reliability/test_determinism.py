"""Same text, same vector: every variant an artifact carries gives a text the same vector whether it
is embedded alone, in a length-sorted batch of many, or next to a much longer text (padding), so the
cache never keeps one of several answers by chance. And `MARC_VARIANT=auto` on CPU serves int8 only
when the artifact's int8 has per-row activation scales (which of int8 and fp32 is faster:
tests/service/model/test_variant_choice.py)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from artifact.manifest import read_manifest
from service.model.encoder import load_encoder
from tests.support.reliability_report import record

# Float rounding of a different padding length or batch shape: ~1e-6 for fp32 and int8, ~1e-5 for fp16
# (computed in float16). The per-batch int8 scaling this guards against moved components by up to 0.43
# on SmolLM2 L8 (the int8 table of docs/export.md).
TOLERANCE = 1e-4
TEXTS = [f"catalogue item {i}: {'red leather sofa with oak legs ' * (1 + i % 6)}".strip() for i in range(24)]
LONG_MATE = "a much longer text about a vintage brown leather office chair with armrests, " * 4


def _max_diffs(artifact: Path, variant: str) -> dict[str, float]:
    encoder = load_encoder(artifact, variant=variant, provider="cpu")
    alone = np.stack([encoder.embed([text], 1).vectors[0] for text in TEXTS])
    in_one_batch = encoder.embed(TEXTS, len(TEXTS)).vectors
    in_runs_of_5 = encoder.embed(TEXTS[::-1], 5).vectors[::-1]
    next_to_long = np.stack([encoder.embed([text, LONG_MATE], 2).vectors[0] for text in TEXTS])
    return {
        "batch": float(np.abs(alone - in_one_batch).max()),
        "runs": float(np.abs(alone - in_runs_of_5).max()),
        "padding": float(np.abs(alone - next_to_long).max()),
    }


def test_every_variant_gives_a_text_the_same_vector_in_any_batch(tiny_artifact: Path) -> None:
    variants = list(read_manifest(tiny_artifact).variants)
    diffs = {variant: _max_diffs(tiny_artifact, variant) for variant in variants}
    record(
        "determinism",
        variants=variants,
        texts=len(TEXTS),
        max_abs_diff={variant: max(d.values()) for variant, d in diffs.items()},
        tolerance=TOLERANCE,
    )
    assert variants == ["fp32", "int8", "fp16"]  # the fixture carries every variant
    assert all(value <= TOLERANCE for d in diffs.values() for value in d.values()), diffs


def test_auto_serves_int8_on_cpu_only_with_per_row_activation_scales(
    tiny_artifact: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # No speed asked of int8 (0): int8 is served wherever it keeps a text's vector batch-independent.
    assert load_encoder(tiny_artifact, int8_min_speedup=0).artifact.variant == "int8"
    # An artifact exported before per-row scales: its manifest does not say so (the manifest is not
    # hashed; the model files are, and they are untouched).
    older = shutil.copytree(tiny_artifact, tmp_path / "older")
    manifest = json.loads((older / "manifest.json").read_text())
    del manifest["export"]["int8"]["activations"]
    (older / "manifest.json").write_text(json.dumps(manifest))
    for min_speedup in (0, 1e-9):  # never a candidate: neither unmeasured nor however fast it runs
        choice = load_encoder(older, int8_min_speedup=min_speedup).variant_choice
        assert (choice.variant, choice.rule) == ("fp32", "no-int8")
    with caplog.at_level(logging.WARNING, logger="service.model.encoder"):
        assert load_encoder(older, variant="int8").artifact.variant == "int8"
    assert any("depends on the texts it is batched with" in r.getMessage() for r in caplog.records)
