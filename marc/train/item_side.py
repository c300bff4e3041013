"""The item side of training: item indices -> C's (mean, logvar) and the pooled state C saw. Frozen mode
looks the states up in a precomputed matrix; LoRA mode runs cached token states of block L - m through
the top m kept blocks."""

from __future__ import annotations

import torch
from torch import nn

from marc.backbone import Pooling, pool
from marc.features import TokenStates
from marc.modules import Compressor


class ItemSide:
    """Turns item indices into C's (mean, logvar) and the pooled state C saw."""

    compressor: Compressor
    eval_batch: int = 4096
    """Items per forward pass when encoding everything without gradients."""

    def encode(self, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def modules(self) -> list[nn.Module]:
        return [self.compressor]

    def backbone_parameters(self) -> list[nn.Parameter]:
        """Trainable backbone parameters (none when frozen)."""
        return []

    def all_means(self, num_items: int) -> torch.Tensor:
        """Served z (eval mode, no gradients) for every item, [num_items, k]."""
        modes = [m.training for m in self.modules()]
        for m in self.modules():
            m.eval()
        try:
            with torch.no_grad():
                chunks = [
                    self.encode(torch.arange(start, min(start + self.eval_batch, num_items)))[0]
                    for start in range(0, num_items, self.eval_batch)
                ]
        finally:
            for m, mode in zip(self.modules(), modes, strict=True):
                m.train(mode)
        return torch.cat(chunks)


class FrozenItems(ItemSide):
    def __init__(self, pooled: torch.Tensor, compressor: Compressor) -> None:
        self.pooled = pooled
        self.compressor = compressor

    def encode(self, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        states = self.pooled[items]
        mean, logvar = self.compressor(states)
        return mean, logvar, states


class TopLayerItems(ItemSide):
    """LoRA mode: the cached token states of block L - m (`marc.features.token_states`) through the
    top m kept blocks (LoRA-wrapped, then merged), pooling and C. Blocks below L - m are frozen and
    carry no LoRA, so their output never changes: a step costs m blocks, not L."""

    eval_batch = 64

    def __init__(
        self,
        backbone: nn.Module,
        tokens: TokenStates,
        compressor: Compressor,
        pooling: Pooling,
        device: torch.device,
    ) -> None:
        self.backbone = backbone
        """`marc.backbone.layer_view` of the top m kept blocks (peft-wrapped while training)."""
        self.tokens = tokens
        self.compressor = compressor
        self.pooling: Pooling = pooling
        self.device = device

    def _batch(self, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded token states [B, W, d] and their attention mask [B, W]."""
        rows = [self.tokens.item(i) for i in items.tolist()]
        width = max(len(r) for r in rows)
        states = torch.zeros((len(rows), width, self.tokens.values.shape[1]), dtype=torch.float32)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            states[i, : len(row)] = torch.from_numpy(row)
            mask[i, : len(row)] = 1
        return states.to(self.device), mask.to(self.device)

    def encode(self, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        states, mask = self._batch(items)
        hidden = self.backbone(inputs_embeds=states, attention_mask=mask, use_cache=False).last_hidden_state
        pooled = pool(hidden, mask, self.pooling)
        mean, logvar = self.compressor(pooled)
        return mean, logvar, pooled

    def modules(self) -> list[nn.Module]:
        return [self.compressor, self.backbone]

    def backbone_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.backbone.parameters() if p.requires_grad]
