"""torch -> ONNX for the serving encoder (truncated backbone + pooling + compressor mean)."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from artifact.names import INPUT_NAMES, OUTPUT_NAME
from marc.encoder import ItemEncoder

# Batch and sequence length vary per request; k is fixed.
_DYNAMIC_AXES = {
    INPUT_NAMES[0]: {0: "batch", 1: "sequence"},
    INPUT_NAMES[1]: {0: "batch", 1: "sequence"},
    OUTPUT_NAME: {0: "batch"},
}


def export_onnx(
    encoder: ItemEncoder, input_ids: torch.Tensor, attention_mask: torch.Tensor, path: Path, opset: int
) -> None:
    """Trace ``encoder`` on the example batch and write ``path``.

    The TorchScript exporter (``dynamo=False``) is used because it is byte-deterministic for a given
    model and example, which keeps the artifact fingerprint stable across exports. The example must
    contain a padded row so the attention-mask path is traced rather than short-cut.
    """
    encoder.eval()
    # No KV cache: the serving graph is a single forward pass, the cache would only add dead nodes.
    encoder.backbone.config.use_cache = False
    with warnings.catch_warnings(), torch.no_grad():
        # Tracer warnings about Python-side shape checks in transformers are expected and harmless
        # here: the parity check on other shapes is what proves the graph generalises.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            encoder,
            (input_ids, attention_mask),
            str(path),
            input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAME],
            dynamic_axes=_DYNAMIC_AXES,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
