"""Reduced-precision siblings of ``model.onnx``; same input/output names, dtypes and shapes.
(int8 lives in `export.quantize`.)"""

from __future__ import annotations

from pathlib import Path

import onnx

VARIANT_FILES = {"fp32": "model.onnx", "int8": "model.int8.onnx", "fp16": "model.fp16.onnx"}


def convert_fp16(src: Path, dst: Path) -> None:
    """float16 weights and compute (for GPU); inputs and output stay int64/float32 (keep_io_types)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dst))
