"""Model configuration: everything needed to rebuild a MARC encoder, saved inside every checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from marc.backbone import Pooling, TinySpec


@dataclass
class ModelConfig:
    backbone: str = "smollm2"
    """'smollm2', 'tiny', 'tiny:<seed>' or a local Hugging Face model folder."""
    tiny: TinySpec = field(default_factory=TinySpec)
    """Shape of the random backbone when backbone is 'tiny' (ignored otherwise)."""
    layer: int = 15
    """Cut layer L: keep the embeddings and the first L blocks."""
    pooling: Pooling = "mean"
    max_length: int = 64
    """Tokens per item text; longer texts are truncated."""
    dim: int = 64
    """k, the size of the compressed item vector z."""
    compressor_hidden: int = 0
    """0 = C is linear (mean and log-variance heads); >0 = one narrow GELU layer in front."""
    adapter_hidden: int = 256
    adapter_layers: int = 3
    """Depth of the task adaptation module A (deep, non-linear by design)."""
    beta: float = 1e-3
    """Weight of the KL information bottleneck on z."""
    recon_weight: float = 0.0
    """Weight of reconstructing the (stop-gradient) pooled backbone state from z; 0 = off."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        values = dict(raw)
        if isinstance(values.get("tiny"), dict):
            values["tiny"] = TinySpec(**values["tiny"])
        return cls(**values)
