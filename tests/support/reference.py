"""The vectors the service must agree with: the artifact's model run directly with ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime

from artifact.loader import load_artifact


def onnx_reference(artifact_dir: Path, texts: list[str], variant: str = "fp32") -> np.ndarray:
    """The artifact's model run directly with ONNX Runtime on one padded batch of ``texts``."""
    artifact = load_artifact(artifact_dir, variant)
    session = onnxruntime.InferenceSession(str(artifact.model_path), providers=["CPUExecutionProvider"])
    return session.run(["embedding"], artifact.tokenize(texts))[0]
