"""The smoke check a model passes before it takes traffic (at start-up and on every reload), after
the verified loader checked its files (sha256, fingerprints) and its graph (inputs, output, width):
the served session itself answers probe texts with finite, non-zero, distinct vectors of the
manifest's width, and gives each text the same vector alone as in a padded batch (the serving
contract every variant keeps: `tests/reliability/test_determinism.py`). A model that loads but
computes garbage is refused here, before any request sees it."""

from __future__ import annotations

import numpy as np

from artifact.names import ArtifactError
from service.model.encoder import OnnxEncoder

PROBE_TEXTS = (
    "Wireless waterproof bluetooth speaker, blue",
    "A quiet drama about two sisters and a farm in winter, 1998",
    "stainless steel kitchen knife set with wooden block and sharpener, eight pieces",
)
# Alone vs in a padded batch: the per-row int8 and fp32 variants agree to ~1e-6 (docs/export.md); fp16 ~1e-3.
MIN_COSINE = 0.999


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(axis=1) / np.maximum(norms, 1e-12)


def smoke_check(encoder: OnnxEncoder) -> None:
    """Raise ArtifactError naming the model file when ``encoder`` fails the smoke check. Blocking."""
    where = encoder.artifact.model_path
    batch = encoder.embed(PROBE_TEXTS, max_batch_size=len(PROBE_TEXTS)).vectors
    if batch.shape != (len(PROBE_TEXTS), encoder.dim):
        raise ArtifactError(
            f"{where}: smoke check: vectors of shape {batch.shape}, expected (3, {encoder.dim})"
        )
    if not np.isfinite(batch).all():
        raise ArtifactError(f"{where}: smoke check: the model returns non-finite values")
    if (np.linalg.norm(batch, axis=1) == 0).any():
        raise ArtifactError(f"{where}: smoke check: the model returns all-zero vectors")
    if np.allclose(batch[0], batch[1:], atol=1e-7):
        raise ArtifactError(f"{where}: smoke check: different texts get the same vector")
    alone = np.concatenate([encoder.embed([text], max_batch_size=1).vectors for text in PROBE_TEXTS])
    cosine = _cosine(alone, batch)
    if not (cosine >= MIN_COSINE).all():
        raise ArtifactError(
            f"{where}: smoke check: a text alone and in a batch get different vectors "
            f"(cosine {cosine.min():.5f} < {MIN_COSINE})"
        )
