"""MARC's training objective: task BCE + beta * KL information bottleneck + lambda * reconstruction.

The KL term limits how much z can say about an item (so C keeps what the task needs in a compact,
general form); the optional reconstruction term keeps z informative about the backbone state itself.

Nested (Matryoshka) dimensions, ``ModelConfig.nested_dims`` = d_1 < ... < d_m = k: every prefix
z[:d] must be a vector on its own, so the whole objective is applied to each prefix - its own task
adaptation head scores z[:d] (`marc.modules.PrefixHeads`), the KL is that of the first d components
and the reconstruction (if on) decodes z[:d] with its own decoder - and the prefixes' objectives are
averaged with equal weights (`nested_loss`):

    total = (1/m) * sum_d [ BCE(A_d(z[:d])) + beta * KL(z[:d]) + lambda * recon_d(z[:d]) ]

Equal weights, as in Matryoshka Representation Learning; the mean (not the sum) keeps the scale of
the loss, and so the learning rate and beta, those of a single-size run. Component i is in every
prefix with d > i, so the first components carry the most task loss and the most KL pressure: they
are trained to hold what matters most. A run without nesting is the case m = 1 and unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def task_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Click-through loss, mean over the batch."""
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


def kl_to_standard_normal(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) summed over the k dimensions, averaged over the batch."""
    per_dim = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)
    return per_dim.sum(-1).mean()


def sample_z(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Reparameterised sample z = mean + sigma * eps (training only; serving uses the mean)."""
    return mean + torch.randn_like(mean) * (0.5 * logvar).exp()


class Reconstruction(nn.Module):
    """A linear decoder z -> pooled backbone state. The target is layer-normalised (mid-layer LLM
    states have a few huge channels that would dominate a raw MSE) and never receives gradient."""

    def __init__(self, dim: int, state_dim: int) -> None:
        super().__init__()
        self.decoder = nn.Linear(dim, state_dim)

    def forward(self, z: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        target = F.layer_norm(pooled.detach(), pooled.shape[-1:])
        return F.mse_loss(self.decoder(z), target)


@dataclass
class LossParts:
    total: torch.Tensor
    bce: torch.Tensor
    kl: torch.Tensor
    recon: torch.Tensor


def nested_loss(parts: list[LossParts]) -> LossParts:
    """Equal-weight mean of the prefixes' objectives (each from `marc_loss`); one part is itself."""
    if len(parts) == 1:
        return parts[0]
    names = ("total", "bce", "kl", "recon")
    return LossParts(*(torch.stack([getattr(part, name) for part in parts]).mean() for name in names))


def marc_loss(
    bce: torch.Tensor, kl: torch.Tensor, recon: torch.Tensor, *, beta: float, recon_weight: float
) -> LossParts:
    """total = BCE + beta * KL + recon_weight * reconstruction."""
    return LossParts(bce + beta * kl + recon_weight * recon, bce, kl, recon)
