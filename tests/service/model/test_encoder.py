"""Encoder loading on CPU: its log line, ONNX parity, the variants' fingerprints, CUDA refused without it."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from artifact.names import ArtifactError
from service.model.encoder import load_encoder
from tests.support.reference import onnx_reference


def test_encoder_on_cpu_logs_one_line_and_matches_onnx(
    tiny_artifact: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="service.model.encoder"):
        encoder = load_encoder(tiny_artifact, int8_min_speedup=0)
    # auto on CPU with no speed asked of int8 = int8, as the artifact's int8 has per-row scales
    assert encoder.provider == "CPUExecutionProvider" and encoder.artifact.variant == "int8"
    assert [r.getMessage() for r in caplog.records if "execution provider" in r.getMessage()] == [
        "execution provider: CPUExecutionProvider (CUDA not available), variant int8 "
        "(MARC_INT8_MIN_SPEEDUP=0: int8 wherever the artifact has it, not measured), model tiny-artifact"
    ]
    texts = ["short", "a much longer text about a red leather sofa and a lamp", "medium length text"]
    encoded = encoder.embed(texts, max_batch_size=2)
    assert [run.items for run in encoded.runs] == [2, 1]
    np.testing.assert_allclose(encoded.vectors, onnx_reference(tiny_artifact, texts), atol=1e-5)


def test_int8_variant_has_its_own_fingerprint(tiny_artifact: Path) -> None:
    fp32, int8 = load_encoder(tiny_artifact, variant="fp32"), load_encoder(tiny_artifact, variant="int8")
    assert int8.artifact.variant == "int8" and int8.artifact.fingerprint != fp32.artifact.fingerprint
    texts = ["red shoes", "blue wireless speaker"]
    a, b = fp32.embed(texts, 8).vectors, int8.embed(texts, 8).vectors
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() > 0.9


def test_cuda_requested_without_cuda_is_refused_clearly(tiny_artifact: Path) -> None:
    with pytest.raises(ArtifactError, match="MARC_PROVIDER=cuda"):
        load_encoder(tiny_artifact, provider="cuda")
