"""`marc export`: checkpoint folder -> artifact directory (model.onnx, tokenizer.json, manifest.json)."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

DESCRIPTION = """\
Export a MARC checkpoint (made by `marc train`) to a self-describing ONNX artifact: the truncated
backbone + pooling + compressor mean as model.onnx (inputs input_ids/attention_mask int64 with
dynamic batch and sequence, output embedding float32 [batch, k]), tokenizer.json for the
`tokenizers` library (padding and truncation set) and manifest.json (fingerprint, sha256 of every
file, backbone, layer, k, parity numbers, metrics). A parity check against PyTorch on new shapes
runs as part of the export; if it fails, the command exits with status 1 and writes no manifest.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a checkpoint to an ONNX artifact directory (with parity check)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--checkpoint", type=Path, required=True, help="checkpoint folder written by `marc train`"
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="artifact directory to write (created; files are replaced)"
    )
    parser.add_argument(
        "--int8",
        action="store_true",
        help="also write model.int8.onnx: dynamic int8 quantisation for CPU (must keep mean cosine >= 0.99)",
    )
    parser.add_argument(
        "--fp16",
        action="store_true",
        help="also write model.fp16.onnx: float16 weights for GPU, float32 inputs/outputs (cosine >= 0.999)",
    )
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset version (default: %(default)s)")
    parser.add_argument(
        "--name", default=None, help="model name recorded in the manifest (default: the --out folder name)"
    )
    parser.set_defaults(handler=run_export)


def run_export(args: argparse.Namespace) -> int:
    from export.onnx_export import export_checkpoint
    from export.parity import ParityError

    log = logging.getLogger("marc.export")
    start = time.perf_counter()
    try:
        manifest = export_checkpoint(
            args.checkpoint, args.out, int8=args.int8, fp16=args.fp16, opset=args.opset, name=args.name
        )
    except (ParityError, FileNotFoundError, ValueError) as exc:
        print(f"marc export: FAILED: {exc}", file=sys.stderr)
        return 1
    log.info("export finished in %.1f s", time.perf_counter() - start)
    print(f"artifact: {args.out}")
    print(f"name: {manifest.name}  fingerprint: {manifest.fingerprint}")
    for variant, entry in manifest.variants.items():
        parity = manifest.parity[variant]
        print(
            f"  {variant:5s} {entry.file:18s} {entry.bytes / 1e6:8.1f} MB  "
            f"max|diff| {parity['max_abs_diff']:.2e}  mean cosine {parity['mean_cosine']:.5f}"
        )
    return 0
