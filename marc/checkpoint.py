"""Checkpoint folder: self-describing, no pickle.

  config.json                 {"model": ModelConfig, "train": {...}, "data": {...}} - rebuilds the model
  compressor.safetensors      C
  adapter.safetensors         A and the user tower (training only; export does not need it)
  backbone_delta.safetensors  optional: backbone tensors changed by training (LoRA merged), by name
  metrics.json                training/evaluation metrics
  backbone.json               where the backbone came from, its depth and width (informational)

The frozen backbone itself is not copied: it is rebuilt from its source (the smollm2 package,
the tiny seed, or the model folder), which keeps checkpoints a few MB.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedTokenizerFast

from marc.backbone import load_backbone, truncate
from marc.config import ModelConfig
from marc.encoder import ItemEncoder
from marc.modules import Compressor

CONFIG_FILE = "config.json"
COMPRESSOR_FILE = "compressor.safetensors"
ADAPTER_FILE = "adapter.safetensors"
BACKBONE_DELTA_FILE = "backbone_delta.safetensors"
METRICS_FILE = "metrics.json"
BACKBONE_FILE = "backbone.json"


@dataclass
class Checkpoint:
    config: ModelConfig
    encoder: ItemEncoder
    """Truncated backbone + pooling + C, in eval mode: (input_ids, attention_mask) -> z."""
    tokenizer: PreTrainedTokenizerFast
    total_layers: int
    hidden_size: int
    architecture: str
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    """The rest of config.json (train/data sections), verbatim."""


def _contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in tensors.items()}


def save_checkpoint(
    directory: Path,
    config: ModelConfig,
    compressor: Compressor,
    *,
    adapter: nn.Module | None = None,
    backbone_delta: dict[str, torch.Tensor] | None = None,
    backbone_info: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG_FILE).write_text(
        json.dumps({"model": config.to_dict(), **(extra or {})}, indent=2, default=str)
    )
    save_file(_contiguous(compressor.state_dict()), directory / COMPRESSOR_FILE)
    if adapter is not None:
        save_file(_contiguous(adapter.state_dict()), directory / ADAPTER_FILE)
    if backbone_delta:
        save_file(_contiguous(backbone_delta), directory / BACKBONE_DELTA_FILE)
    (directory / METRICS_FILE).write_text(json.dumps(metrics or {}, indent=2, default=str))
    if backbone_info is not None:
        (directory / BACKBONE_FILE).write_text(json.dumps(backbone_info, indent=2))
    return directory


def read_config(directory: Path) -> tuple[ModelConfig, dict[str, Any]]:
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (is {directory} a checkpoint made by `marc train`?)")
    raw = json.loads(path.read_text())
    model = raw.pop("model", None)
    if not isinstance(model, dict):
        raise ValueError(f"{path}: missing the 'model' section")
    return ModelConfig.from_dict(model), raw


def load_checkpoint(directory: Path) -> Checkpoint:
    """Rebuild the serving encoder from a checkpoint folder (backbone from its source)."""
    directory = Path(directory)
    config, extra = read_config(directory)
    backbone = load_backbone(config.backbone, config.tiny)
    architecture = type(backbone.model).__name__
    model = truncate(backbone.model, config.layer)
    delta_path = directory / BACKBONE_DELTA_FILE
    if delta_path.is_file():
        missing_or_unknown = model.load_state_dict(load_file(delta_path), strict=False).unexpected_keys
        if missing_or_unknown:
            raise ValueError(f"{delta_path}: tensors not in the backbone: {missing_or_unknown[:5]}")
    compressor = Compressor(backbone.hidden_size, config.dim, config.compressor_hidden)
    compressor.load_state_dict(load_file(directory / COMPRESSOR_FILE))
    encoder = ItemEncoder(model, compressor, config.pooling).eval()
    metrics_path = directory / METRICS_FILE
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    return Checkpoint(
        config=config,
        encoder=encoder,
        tokenizer=backbone.tokenizer,
        total_layers=backbone.num_layers,
        hidden_size=backbone.hidden_size,
        architecture=architecture,
        metrics=metrics,
        extra=extra,
    )
