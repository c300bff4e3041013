"""Export: ONNX artifact from a checkpoint, parity, quantised variants, fingerprint, torch-free loader."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from service.artifact import load_artifact, open_session, read_manifest


def test_tiny_artifact_has_every_variant_and_parity_numbers(tiny_artifact: Path) -> None:
    manifest = read_manifest(tiny_artifact)
    assert set(manifest.variants) == {"fp32", "int8", "fp16"}
    assert manifest.backbone.layer == 2 and manifest.backbone.total_layers == 4
    assert manifest.dim == 16 and manifest.max_length == 32
    assert manifest.parity["fp32"]["max_abs_diff"] <= 1e-4
    assert manifest.parity["int8"]["mean_cosine"] >= 0.99
    assert manifest.parity["fp16"]["mean_cosine"] >= 0.999
    # Parity ran on batch sizes other than the traced batch of 2, with max_length-long rows.
    shapes = manifest.parity["batch_shapes"]
    assert [1, 32] in shapes and all(batch != 2 for batch, _ in shapes) and any(b % 2 for b, _ in shapes)
    assert manifest.metrics["valid_auc"] == 0.5
    assert manifest.config["model"]["layer"] == 2
    assert json.loads((tiny_artifact / "manifest.json").read_text())["fingerprint"] == manifest.fingerprint


def test_every_variant_loads_and_returns_batch_by_k(tiny_artifact: Path) -> None:
    fingerprints = set()
    for variant in ("fp32", "int8", "fp16"):
        artifact = load_artifact(tiny_artifact, variant)
        session = open_session(artifact)
        vectors = session.run(None, artifact.tokenize(["red shoes", "x", "a blue leather jacket"]))[0]
        assert vectors.shape == (3, 16) and vectors.dtype == np.float32
        fingerprints.add(artifact.fingerprint)
    assert len(fingerprints) == 3
    assert load_artifact(tiny_artifact).fingerprint == read_manifest(tiny_artifact).fingerprint


def test_other_artifact_has_another_fingerprint(tiny_artifact: Path, tiny_artifact_other: Path) -> None:
    assert read_manifest(tiny_artifact).fingerprint != read_manifest(tiny_artifact_other).fingerprint
