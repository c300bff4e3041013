"""`export_checkpoint`: a MARC checkpoint folder -> a verified artifact directory (docs/ARCHITECTURE.md,
"The artifact contract").

Steps (each logged with its time): load the checkpoint, trace the encoder to ONNX, write the
serving tokenizer, build the reduced-precision variants, check parity against PyTorch, hash the
files and write ``manifest.json`` last, so a failed export never leaves a loadable artifact.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import torch

from artifact.fingerprint import compute_fingerprint, fingerprint_settings, variant_fingerprint
from artifact.manifest import BackboneInfo, FileEntry, Manifest, VariantEntry, sha256_file
from artifact.names import FORMAT_VERSION, MANIFEST_FILE, TOKENIZER_FILE
from export.graph import export_onnx
from export.parity import check_parity
from export.quantize import quantize_int8
from export.tokenizer_file import write_tokenizer
from export.variants import VARIANT_FILES, convert_fp16
from marc.checkpoint import CONFIG_FILE, load_checkpoint
from marc.determinism import kernel_profile

log = logging.getLogger(__name__)

# Traced example: batch 2 with one padded row (the parity check then uses other shapes).
_EXAMPLE_TEXTS = ["red shoes", "a classic navy cotton shirt for office and travel"]


@contextmanager
def _step(name: str) -> Iterator[None]:
    log.info("%s ...", name)
    start = time.perf_counter()
    yield
    log.info("%s done in %.1f s", name, time.perf_counter() - start)


def _file_entry(path: Path) -> FileEntry:
    return FileEntry(file=path.name, sha256=sha256_file(path), bytes=path.stat().st_size)


def export_checkpoint(
    checkpoint_dir: Path | str,
    out_dir: Path | str,
    *,
    int8: bool = False,
    fp16: bool = False,
    opset: int = 18,
    name: str | None = None,
) -> Manifest:
    """Export ``checkpoint_dir`` to ``out_dir``; raises `export.parity.ParityError` if ONNX Runtime
    does not reproduce PyTorch within the thresholds."""
    checkpoint_dir, out_dir = Path(checkpoint_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Remove the previous manifest first: until the new one is written the directory is not an artifact.
    (out_dir / MANIFEST_FILE).unlink(missing_ok=True)
    wanted = ["fp32"] + (["int8"] if int8 else []) + (["fp16"] if fp16 else [])
    for variant, file in VARIANT_FILES.items():
        if variant not in wanted:
            (out_dir / file).unlink(missing_ok=True)  # stale sibling from an earlier export
    models = {variant: out_dir / VARIANT_FILES[variant] for variant in wanted}

    with _step(f"load checkpoint {checkpoint_dir}"):
        checkpoint = load_checkpoint(checkpoint_dir)
        config = checkpoint.config
        raw_config = json.loads((checkpoint_dir / CONFIG_FILE).read_text())

    with _step(
        f"export ONNX (opset {opset}, {config.layer} of {checkpoint.total_layers} layers) + tokenizer.json"
    ):
        example = checkpoint.tokenizer(
            _EXAMPLE_TEXTS, padding=True, truncation=True, max_length=config.max_length, return_tensors="pt"
        )
        export_onnx(
            checkpoint.encoder, example["input_ids"], example["attention_mask"], models["fp32"], opset
        )
        write_tokenizer(checkpoint.tokenizer, config.max_length, out_dir / TOKENIZER_FILE)

    int8_report = None
    if int8:
        with _step("quantise int8 (dynamic, per channel, measured-sensitive nodes kept fp32)"):
            int8_report = quantize_int8(models["fp32"], models["int8"], out_dir / TOKENIZER_FILE)
    if fp16:
        with _step("convert fp16"):
            convert_fp16(models["fp32"], models["fp16"])

    with _step("parity check (ONNX Runtime vs PyTorch, new shapes)"):
        parity = check_parity(
            checkpoint.encoder, checkpoint.tokenizer, out_dir / TOKENIZER_FILE, config.max_length, models
        )
        for variant in wanted:
            log.info("  %s: %s", variant, parity[variant])

    with _step("hash files and write manifest"):
        tokenizer_entry = _file_entry(out_dir / TOKENIZER_FILE)
        files = {variant: _file_entry(path) for variant, path in models.items()}
        settings = fingerprint_settings(
            backbone_source=config.backbone,
            layer=config.layer,
            pooling=config.pooling,
            dim=config.dim,
            max_length=config.max_length,
            nested_dims=config.nested_dims,
        )
        fingerprint = compute_fingerprint(files["fp32"].sha256, tokenizer_entry.sha256, settings)
        manifest = Manifest(
            format_version=FORMAT_VERSION,
            name=name or out_dir.resolve().name,
            fingerprint=fingerprint,
            created_at=datetime.now(UTC),
            backbone=BackboneInfo(
                source=config.backbone,
                architecture=checkpoint.architecture,
                total_layers=checkpoint.total_layers,
                layer=config.layer,
                hidden_size=checkpoint.hidden_size,
            ),
            pooling=config.pooling,
            dim=config.dim,
            nested_dims=config.nested_dims,
            max_length=config.max_length,
            tokenizer=tokenizer_entry,
            variants={
                variant: VariantEntry(
                    **entry.model_dump(), fingerprint=variant_fingerprint(fingerprint, variant, entry.sha256)
                )
                for variant, entry in files.items()
            },
            parity=parity,
            metrics=checkpoint.metrics,
            config=raw_config,
            export={
                "checkpoint": str(checkpoint_dir),
                "opset": opset,
                "torch": torch.__version__,
                "kernels": kernel_profile(),  # the CPU numerics of this export (marc.determinism)
                "int8": int8_report,
                "fp16": "onnxruntime float16 conversion, float32 inputs/outputs kept" if fp16 else None,
            },
        )
        # Write-then-rename: a reader never sees a half-written manifest.
        tmp = out_dir / f"{MANIFEST_FILE}.tmp"
        tmp.write_text(manifest.model_dump_json(indent=2))
        tmp.replace(out_dir / MANIFEST_FILE)
    log.info("artifact %s written: fingerprint %s", out_dir, fingerprint)
    return manifest
