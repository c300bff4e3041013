"""The artifact's truncated backbone as a Hugging Face model folder a peer server can load: the first
L decoder layers of the same backbone, its tokenizer, and a sentence-transformers pooling config (mean
over real tokens), so the peer computes what the artifact's backbone computes before the compressor.

One difference a folder cannot avoid: a cut model's final RMSNorm is an identity in the artifact
(`marc.backbone.truncate`), but a Llama config always has one, so the peer normalises the last hidden
state once more (576 multiply-adds per token: nothing next to the 8 blocks).

Run in the project's environment (torch, transformers, gguf):
``python -m loadtest.peer_model --backbone smollm2 --layer 8 --max-length 64 --out DIR``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def write_peer_model(backbone: str, layer: int, max_length: int, out: Path) -> Path:
    from transformers import AutoConfig, AutoModel

    from marc.backbone import load_backbone, truncate

    loaded = load_backbone(backbone)
    cut = truncate(loaded.model, layer)
    # A plain model of the cut's config with its weights: a GGUF-loaded model refuses to be saved.
    config = AutoConfig.for_model(
        **{k: v for k, v in cut.config.to_dict().items() if k != "quantization_config"}
    )
    config.architectures = [type(cut).__name__]
    model = AutoModel.from_config(config)
    model.load_state_dict(cut.state_dict(), strict=False)  # the cut's norm is an identity: no weight
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    loaded.tokenizer.model_max_length = max_length
    loaded.tokenizer.save_pretrained(out)
    _readable_by_older_transformers(out)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    (out / "modules.json").write_text(json.dumps(modules, indent=2))
    (out / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": max_length, "do_lower_case": False})
    )
    (out / "1_Pooling").mkdir(exist_ok=True)
    (out / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": model.config.hidden_size, "pooling_mode_mean_tokens": True})
    )
    return out


def _readable_by_older_transformers(out: Path) -> None:
    """The peer pins an older transformers (4.x): name the tokenizer class it knows, and give the
    rotary base under its old key too."""
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
    tokenizer_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    config = json.loads((out / "config.json").read_text())
    rope = config.get("rope_parameters") or {}
    if "rope_theta" in rope:
        config.setdefault("rope_theta", rope["rope_theta"])
    config.setdefault("torch_dtype", config.get("dtype", "float32"))
    (out / "config.json").write_text(json.dumps(config, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtest.peer_model")
    parser.add_argument("--backbone", default="smollm2")
    parser.add_argument("--layer", type=int, required=True)
    parser.add_argument("--max-length", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    write_peer_model(args.backbone, args.layer, args.max_length, args.out)


if __name__ == "__main__":
    main()
