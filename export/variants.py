"""Reduced-precision siblings of ``model.onnx``; same input/output names, dtypes and shapes."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import onnx

VARIANT_FILES = {"fp32": "model.onnx", "int8": "model.int8.onnx", "fp16": "model.fp16.onnx"}


@contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """onnxruntime.quantization logs one INFO/WARNING line per tensor on the root logger."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_int8(src: Path, dst: Path) -> None:
    """Dynamic int8 quantisation (weights int8 ahead of time, activations at run time) for CPU.

    Per output channel: per-tensor scales lose more on the few huge-magnitude channels of mid-layer
    LLM states (SmolLM2 cut at 15 with a random compressor: mean cosine vs fp32 0.9994 per channel,
    0.9986 per tensor; same speed, ~2.7x fp32). Gemm (the compressor's heads) is not in the default
    op set, so the layer that writes the served vector stays fp32.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet_root_logger():
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8, per_channel=True)


def convert_fp16(src: Path, dst: Path) -> None:
    """float16 weights and compute (for GPU); inputs and output stay int64/float32 (keep_io_types)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dst))
