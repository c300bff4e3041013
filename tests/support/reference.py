"""The vectors the service must agree with: the artifact's model run directly with ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime

from artifact.loader import load_artifact
from artifact.manifest import read_manifest
from service.model.encoder import cpu_variant


def onnx_reference(artifact_dir: Path, texts: list[str], variant: str | None = None) -> np.ndarray:
    """The artifact's model run directly with ONNX Runtime on one padded batch of ``texts``; by default
    the variant the tests' servers serve (`tests.support.servers.TEST_VARIANTS`: int8 when the artifact
    has it)."""
    variant = variant or cpu_variant(read_manifest(artifact_dir))
    artifact = load_artifact(artifact_dir, variant)
    session = onnxruntime.InferenceSession(str(artifact.model_path), providers=["CPUExecutionProvider"])
    return session.run(["embedding"], artifact.tokenize(texts))[0]


def served_fingerprint(artifact_dir: Path) -> str:
    """The fingerprint the tests' servers serve (and key their cache with) on CPU."""
    manifest = read_manifest(artifact_dir)
    return manifest.variants[cpu_variant(manifest)].fingerprint
