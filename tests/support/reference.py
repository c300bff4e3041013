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
    the variant a service with ``MARC_VARIANT=auto`` serves on this CPU machine."""
    variant = variant or cpu_variant(read_manifest(artifact_dir))
    artifact = load_artifact(artifact_dir, variant)
    session = onnxruntime.InferenceSession(str(artifact.model_path), providers=["CPUExecutionProvider"])
    return session.run(["embedding"], artifact.tokenize(texts))[0]


def served_fingerprint(artifact_dir: Path) -> str:
    """The fingerprint a service with ``MARC_VARIANT=auto`` serves (and keys its cache with) on CPU."""
    manifest = read_manifest(artifact_dir)
    return manifest.variants[cpu_variant(manifest)].fingerprint
