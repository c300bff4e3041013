"""The near-free twin of an artifact: the service's own work, measured without the model's.

The twin keeps everything of the artifact that the service's path touches - its tokenizer, max_length,
k and nested prefixes - but its backbone is one random Llama block of width 8, so a run costs
microseconds per item. It is a real artifact: a checkpoint (random compressor) exported by the normal
exporter with its parity check, loaded by `marc serve` through the verified loader. With it, what a
request costs the server is almost all the service's own work around the model (admission, cache,
batching, tokenising, encoding the answer); the bench's "around the model" rows subtract even the
little the runs take.

Built once per artifact into the bench's cache directory, in a subprocess (torch stays out of the
benchmark's own process): ``python -m loadtest.near_free --like ARTIFACT --out DIR``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from artifact.manifest import read_manifest
from artifact.names import MANIFEST_FILE

log = logging.getLogger(__name__)

HIDDEN_SIZE = 8
LAYERS = 1


def near_free_artifact(artifact: Path, cache_dir: Path) -> Path:
    """The near-free twin of ``artifact``, built once into ``cache_dir`` (reused while it exists)."""
    manifest = read_manifest(artifact)
    out = cache_dir / f"near-free-{manifest.fingerprint[:16]}"
    if (out / MANIFEST_FILE).is_file():
        return out
    log.info("building the near-free twin of %s into %s (once)", manifest.name, out)
    command = [sys.executable, "-m", "loadtest.near_free", "--like", str(artifact), "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"near-free twin failed: {(done.stderr or done.stdout).strip()[-2000:]}")
    return out


def build(artifact: Path, out: Path) -> None:
    """Write the twin of ``artifact`` to ``out`` (staged in ``out``.partial, renamed when exported)."""
    import torch
    from transformers import LlamaConfig, LlamaModel, PreTrainedTokenizerFast

    from export.onnx_export import export_checkpoint
    from marc.checkpoint import save_checkpoint
    from marc.config import ModelConfig
    from marc.modules import Compressor

    manifest = read_manifest(artifact)
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    with tempfile.TemporaryDirectory() as scratch:
        backbone = Path(scratch) / "backbone"
        tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(artifact / manifest.tokenizer.file))
        tokenizer.pad_token = read_pad_token(artifact / manifest.tokenizer.file)
        tokenizer.padding_side = "right"
        config = LlamaConfig(
            vocab_size=tokenizer.backend_tokenizer.get_vocab_size(),
            hidden_size=HIDDEN_SIZE,
            intermediate_size=2 * HIDDEN_SIZE,
            num_hidden_layers=LAYERS,
            num_attention_heads=1,
            num_key_value_heads=1,
            max_position_embeddings=max(512, manifest.max_length),
            pad_token_id=tokenizer.pad_token_id,
        )
        torch.manual_seed(0)
        LlamaModel(config).save_pretrained(backbone)
        tokenizer.save_pretrained(backbone)
        model = ModelConfig(
            backbone=str(backbone),
            layer=LAYERS,
            dim=manifest.dim,
            max_length=manifest.max_length,
            nested_dims=list(manifest.nested_dims),
        )
        checkpoint = save_checkpoint(
            Path(scratch) / "checkpoint",
            model,
            Compressor(HIDDEN_SIZE, model.dim, model.compressor_hidden),
            backbone_info={"source": model.backbone, "layers": LAYERS},
            metrics={"note": f"near-free twin of {manifest.name} (random weights)"},
            extra={"train": {"mode": "frozen"}, "data": {"source": "none"}},
        )
        export_checkpoint(checkpoint, partial, name=f"{manifest.name}-near-free")
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)


def read_pad_token(tokenizer_file: Path) -> str:
    """The pad token the artifact's tokenizer pads with (its padding settings name it)."""
    padding = json.loads(tokenizer_file.read_text()).get("padding") or {}
    token = padding.get("pad_token")
    if not token:
        raise ValueError(f"{tokenizer_file} names no pad token in its padding settings")
    return str(token)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtest.near_free", description=__doc__)
    parser.add_argument("--like", type=Path, required=True, help="the artifact to make a twin of")
    parser.add_argument("--out", type=Path, required=True, help="the twin's artifact directory")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    build(args.like, args.out)
    print(args.out)


if __name__ == "__main__":
    main()
