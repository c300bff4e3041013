"""MARC's two modules: the compression module C (shallow, variational) and the task adaptation
module A (deep, non-linear), plus the losses that keep each to its own job."""

from __future__ import annotations

import torch
from torch import nn


class Compressor(nn.Module):
    """C: pooled backbone state (d) -> z (k). Shallow and nearly linear by design.

    Predicts a mean and a log-variance (variational information bottleneck); training samples
    z = mu + sigma * eps, serving uses z = mu. The input LayerNorm tames the few huge-magnitude
    channels that mid-layer LLM states carry.
    """

    def __init__(self, in_dim: int, dim: int, hidden: int = 0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)
        # hidden == 0: purely linear heads; > 0: one narrow non-linear layer in front (still shallow).
        self.trunk: nn.Module = (
            nn.Identity() if hidden == 0 else nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU())
        )
        width = in_dim if hidden == 0 else hidden
        self.mean = nn.Linear(width, dim)
        self.logvar = nn.Linear(width, dim)

    def forward(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(self.norm(pooled))
        return self.mean(h), self.logvar(h).clamp(-10.0, 10.0)
