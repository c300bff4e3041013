"""Export-time parity check: ONNX Runtime on the written artifact files vs PyTorch on the checkpoint.

Runs on batch sizes and sequence lengths the graph was NOT traced with (batch 1, odd batches, one-token
texts, texts truncated at max_length, padded rows). Both sides get the ids of the artifact's own
``tokenizer.json``, after checking they equal the Hugging Face tokenizer's (so the serving tokenizer
is checked too).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

from artifact.names import INPUT_NAMES
from marc.encoder import ItemEncoder

# Thresholds (docs/ARCHITECTURE.md, "The artifact contract"). fp32 is compared element-wise; the
# reduced precisions by the cosine similarity of each row against PyTorch fp32, which is what
# retrieval quality depends on.
FP32_MAX_ABS_DIFF = 1e-4
MIN_MEAN_COSINE = {"int8": 0.99, "fp16": 0.999}

_SHORT = ["x", "red shoes", "Organic green tea, 100 bags", "Crème brûlée set ☕ für 2 — 😀"]
_MEDIUM = [
    "Wireless noise cancelling headphones with a 30 hour battery and a carrying case",
    "Stainless steel chef knife, 20 cm blade, dishwasher safe, made in Germany",
    "Vintage brown leather office chair with armrests",
]
# Long enough to be truncated at any max_length the tokenizer allows in practice.
_LONG = " ".join(["A premium waterproof hiking boot in dark grey suede with a cushioned sole."] * 200)
# Batch sizes 1, 1, 3, 5, 7: none equals the batch of 2 used to trace the graph.
PARITY_BATCHES: tuple[tuple[str, ...], ...] = (
    (_SHORT[1],),
    (_LONG,),
    (_SHORT[0], _MEDIUM[0], _LONG),
    (*_SHORT[1:], _MEDIUM[1], _LONG[:300]),
    (*_MEDIUM, *_SHORT),
)


class ParityError(RuntimeError):
    """The exported graph does not reproduce the PyTorch model closely enough."""


@dataclass
class _Batch:
    feed: dict[str, np.ndarray]
    """ONNX Runtime inputs, from the artifact's tokenizer.json."""
    reference: np.ndarray
    """PyTorch output on the Hugging Face tokenizer's ids."""


def _batches(
    encoder: ItemEncoder, tokenizer: PreTrainedTokenizerFast, serving: Tokenizer, max_length: int
) -> list[_Batch]:
    batches = []
    for texts in PARITY_BATCHES:
        expected = tokenizer(
            list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="np"
        )
        encodings = serving.encode_batch(list(texts))
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        if not (
            np.array_equal(ids, expected["input_ids"]) and np.array_equal(mask, expected["attention_mask"])
        ):
            raise ParityError(
                f"tokenizer.json gives different ids than the checkpoint's tokenizer for {texts!r}"
            )
        with torch.no_grad():
            reference = encoder(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
        batches.append(_Batch({INPUT_NAMES[0]: ids, INPUT_NAMES[1]: mask}, reference))
    return batches


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(axis=1) / np.maximum(norms, 1e-12)


def check_parity(
    encoder: ItemEncoder,
    tokenizer: PreTrainedTokenizerFast,
    serving_tokenizer: Path,
    max_length: int,
    models: dict[str, Path],
) -> dict[str, Any]:
    """Compare every variant in ``models`` (name -> ONNX file) with PyTorch; raise `ParityError` on
    failure, else return the numbers for ``manifest.parity``."""
    import onnxruntime

    batches = _batches(encoder, tokenizer, Tokenizer.from_file(str(serving_tokenizer)), max_length)
    reference = np.concatenate([batch.reference for batch in batches])
    report: dict[str, Any] = {
        "reference": "PyTorch fp32 on the checkpoint",
        "batch_shapes": [list(batch.feed[INPUT_NAMES[0]].shape) for batch in batches],
        "thresholds": {
            "fp32_max_abs_diff": FP32_MAX_ABS_DIFF,
            **{f"{k}_mean_cosine": v for k, v in MIN_MEAN_COSINE.items()},
        },
    }
    failures = []
    for variant, path in models.items():
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        output = np.concatenate([session.run(None, batch.feed)[0] for batch in batches])
        if output.shape != reference.shape:
            raise ParityError(f"{path}: output shape {output.shape}, PyTorch gives {reference.shape}")
        cosine = _cosine(output, reference)
        numbers = {
            "max_abs_diff": float(np.abs(output - reference).max()),
            "mean_cosine": float(cosine.mean()),
            "min_cosine": float(cosine.min()),
        }
        report[variant] = numbers
        if variant == "fp32" and not numbers["max_abs_diff"] <= FP32_MAX_ABS_DIFF:
            failures.append(f"fp32 max abs diff {numbers['max_abs_diff']:.3g} > {FP32_MAX_ABS_DIFF:g}")
        if variant in MIN_MEAN_COSINE and not numbers["mean_cosine"] >= MIN_MEAN_COSINE[variant]:
            failures.append(
                f"{variant} mean cosine {numbers['mean_cosine']:.5f} < {MIN_MEAN_COSINE[variant]:g}"
            )
    if failures:
        raise ParityError(f"parity check failed ({'; '.join(failures)}); numbers: {report}")
    return report
