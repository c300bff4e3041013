"""MARC's two modules: the compression module C (shallow, variational) and the task adaptation
module A (deep, non-linear) with its user tower; the losses that keep each to its own job are in
`marc.losses`."""

from __future__ import annotations

import torch
from torch import nn


class Compressor(nn.Module):
    """C: pooled backbone state (d) -> z (k). Shallow and nearly linear by design.

    Predicts a mean and a log-variance (variational information bottleneck); training samples
    z = mu + sigma * eps, serving uses z = mu.

    Mid-layer LLM states carry a few channels hundreds of times larger than the rest; a per-sample
    LayerNorm alone leaves them dominant (SmolLM2 L15 on the synthetic data: valid AUC 0.65 vs 0.71
    with per-channel standardisation). So C first standardises each channel with statistics of the
    items' pooled states (`set_input_stats`; buffers, so they are saved and exported with C).
    """

    def __init__(self, in_dim: int, dim: int, hidden: int = 0) -> None:
        super().__init__()
        self.register_buffer("input_mean", torch.zeros(in_dim))
        self.register_buffer("input_scale", torch.ones(in_dim))
        self.norm = nn.LayerNorm(in_dim)
        # hidden == 0: purely linear heads; > 0: one narrow non-linear layer in front (still shallow).
        self.trunk: nn.Module = (
            nn.Identity() if hidden == 0 else nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU())
        )
        width = in_dim if hidden == 0 else hidden
        self.mean = nn.Linear(width, dim)
        self.logvar = nn.Linear(width, dim)

    @torch.no_grad()
    def set_input_stats(self, states: torch.Tensor) -> None:
        """Per-channel mean and standard deviation of ``states`` [n, in_dim] (the items' pooled states)."""
        self.input_mean.copy_(states.mean(0))
        self.input_scale.copy_(states.std(0).clamp(min=1e-6))

    @torch.no_grad()
    def init_from_pca(self, states: torch.Tensor) -> None:
        """Start the mean head at PCA: the top-k principal components of the normalised inputs of
        ``states`` [n, in_dim] (fit rows only, e.g. the warm items), whitened so each z starts with
        unit variance. Linear C only (``hidden == 0``)."""
        if not isinstance(self.trunk, nn.Identity):
            raise ValueError("PCA initialisation needs a linear C (compressor_hidden = 0)")
        h = self.norm((states - self.input_mean) / self.input_scale).double()
        centre = h.mean(0)
        _, singular, vectors = torch.linalg.svd(h - centre, full_matrices=False)
        k = self.mean.out_features
        scale = singular[:k] / max(1, len(h) - 1) ** 0.5
        weight = vectors[:k] / scale.clamp(min=1e-6)[:, None]
        self.mean.weight.copy_(weight.float())
        self.mean.bias.copy_((-weight @ centre).float())

    def forward(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(self.norm((pooled - self.input_mean) / self.input_scale))
        return self.mean(h), self.logvar(h).clamp(-10.0, 10.0)


class UserTower(nn.Module):
    """The user side of the proxy task: a user id embedding and the masked mean of the item
    vectors in the user's click history (which is what lets A score items for unseen tastes)."""

    def __init__(self, num_users: int, dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num_users, dim)
        nn.init.normal_(self.embedding.weight, std=0.02)

    def forward(
        self, users: torch.Tensor, history_z: torch.Tensor, history_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """users [B], history_z [B, H, k], history_mask [B, H] (True = real item) -> ([B, k], [B, k])."""
        weights = history_mask.to(history_z.dtype).unsqueeze(-1)
        history = (history_z * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return self.embedding(users), history


class TaskAdapter(nn.Module):
    """A: (z, user) -> click logit. Deep and non-linear by design, so the task-specific
    specialisation lives here and z stays a general item representation.

    Input features are [z, u, h, z*u, z*h] (u = user id embedding, h = pooled history). ``layers``
    counts the Linear layers: ``layers=1`` is a single linear layer over those features (the same
    nearly-linear structure as C, for the "C and A alike" ablation); ``layers>=2`` puts
    ``layers-1`` blocks of Linear -> LayerNorm -> GELU -> Dropout in front of the output layer.
    """

    def __init__(self, dim: int, num_users: int, hidden: int = 256, layers: int = 3, dropout: float = 0.1):
        super().__init__()
        if layers < 1:
            raise ValueError(f"adapter_layers must be >= 1, got {layers}")
        self.user = UserTower(num_users, dim)
        blocks: list[nn.Module] = []
        width = 5 * dim
        for _ in range(layers - 1):
            blocks += [nn.Linear(width, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Dropout(dropout)]
            width = hidden
        blocks.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*blocks)

    def forward(
        self, z: torch.Tensor, users: torch.Tensor, history_z: torch.Tensor, history_mask: torch.Tensor
    ) -> torch.Tensor:
        user, history = self.user(users, history_z, history_mask)
        features = torch.cat([z, user, history, z * user, z * history], dim=-1)
        return self.mlp(features).squeeze(-1)


class DotProductHead(nn.Module):
    """Ablation "MARC without A": the logit is z . (u + h) + bias, so z itself must carry the task
    (no adaptation module to absorb the specialisation)."""

    def __init__(self, dim: int, num_users: int) -> None:
        super().__init__()
        self.user = UserTower(num_users, dim)
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(
        self, z: torch.Tensor, users: torch.Tensor, history_z: torch.Tensor, history_mask: torch.Tensor
    ) -> torch.Tensor:
        user, history = self.user(users, history_z, history_mask)
        return (z * (user + history)).sum(-1) + self.bias


class PrefixHeads(nn.Module):
    """Nested (Matryoshka) training: one head per prefix size d - a `TaskAdapter` or a
    `DotProductHead` of width d - scoring z[:d] (and the history's z[:d]). Only C is served, so the
    heads exist for training and evaluation; called like a single head, it scores with the full-k one.
    """

    def __init__(self, heads: dict[int, nn.Module]) -> None:
        super().__init__()
        self.dims = sorted(heads)
        self.heads = nn.ModuleDict({str(d): heads[d] for d in self.dims})

    def forward(
        self,
        z: torch.Tensor,
        users: torch.Tensor,
        history_z: torch.Tensor,
        history_mask: torch.Tensor,
        dim: int | None = None,
    ) -> torch.Tensor:
        """Logits of the head of prefix ``dim`` (default: the full k) on z[:dim]."""
        d = self.dims[-1] if dim is None else dim
        return self.heads[str(d)](z[..., :d], users, history_z[..., :d], history_mask)
