"""The served model: truncated backbone -> pooling -> compressor mean. This is what gets exported."""

from __future__ import annotations

import torch
from torch import nn

from marc.backbone import Pooling, pool
from marc.modules import Compressor


class ItemEncoder(nn.Module):
    """(input_ids, attention_mask) -> z = mu(C(pool(backbone[:L]))), float32 [batch, k]."""

    def __init__(self, backbone: nn.Module, compressor: Compressor, pooling: Pooling = "mean") -> None:
        super().__init__()
        self.backbone = backbone
        self.compressor = compressor
        self.pooling: Pooling = pooling

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return pool(hidden, attention_mask, self.pooling)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mean, _ = self.compressor(self.pooled(input_ids, attention_mask))
        return mean
