"""The item side of training: item indices -> C's (mean, logvar) and the pooled state C saw. Frozen mode
looks the states up in a precomputed matrix; LoRA mode runs the item texts through the backbone."""

from __future__ import annotations

import torch
from torch import nn

from marc.backbone import Pooling, pool
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


class TextItems(ItemSide):
    """Item texts through the (LoRA-wrapped, then merged) truncated backbone, pooling and C."""

    eval_batch = 64

    def __init__(
        self,
        backbone: nn.Module,
        token_ids: list[list[int]],
        pad_token_id: int,
        compressor: Compressor,
        pooling: Pooling,
        device: torch.device,
    ) -> None:
        self.backbone = backbone
        self.token_ids = token_ids
        self.pad_token_id = pad_token_id
        self.compressor = compressor
        self.pooling: Pooling = pooling
        self.device = device

    def _batch(self, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [self.token_ids[i] for i in items.tolist()]
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):  # right padding, as the served tokenizer does
            input_ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        return input_ids.to(self.device), mask.to(self.device)

    def encode(self, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        input_ids, mask = self._batch(items)
        hidden = self.backbone(input_ids=input_ids, attention_mask=mask).last_hidden_state
        states = pool(hidden, mask, self.pooling)
        mean, logvar = self.compressor(states)
        return mean, logvar, states

    def modules(self) -> list[nn.Module]:
        return [self.compressor, self.backbone]

    def backbone_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.backbone.parameters() if p.requires_grad]
