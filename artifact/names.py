"""The fixed names of the artifact format (files, graph inputs and output, variants) and its error.

An artifact is a directory:
  model.onnx (+ model.int8.onnx, model.fp16.onnx)  inputs input_ids/attention_mask, output embedding
  tokenizer.json                                   loadable by `tokenizers` alone, padding/truncation set
  manifest.json                                    `artifact.manifest.Manifest`
"""

from __future__ import annotations

from typing import Literal

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
TOKENIZER_FILE = "tokenizer.json"
INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAME = "embedding"
Variant = Literal["fp32", "int8", "fp16"]


class ArtifactError(RuntimeError):
    """The artifact cannot be used; the message names the file and what is wrong."""
