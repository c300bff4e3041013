"""LoRA mode: adapters (peft) on the projections of the top m kept layers, fed with cached token states
of layer L - m, and merging them back into plain weights after training.

Only the top m of the L kept blocks carry LoRA; the blocks below are frozen, so their output (the token
states of layer L - m) is computed once per item (`marc.features.token_states`, cached on disk) and
a training step runs m blocks forward and backward instead of L. m = L (the default) is full-depth
LoRA: the cached states are then the token embeddings.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from marc.backbone import Backbone, layer_view, truncate
from marc.config import ModelConfig, TrainConfig
from marc.data import RecDataset
from marc.features import token_states
from marc.modules import Compressor
from marc.train.item_side import TopLayerItems

_LAYER_INDEX = re.compile(r"^layers\.(\d+)\.")


def adapted_layers(config: ModelConfig, train: TrainConfig) -> int:
    """m: how many of the top kept layers get LoRA (``lora_layers`` 0 = all L)."""
    if train.lora_layers < 0:
        raise ValueError(f"lora_layers must be >= 0 (0 = all kept layers), got {train.lora_layers}")
    if train.lora_layers > config.layer:
        raise ValueError(
            f"lora_layers ({train.lora_layers}) cannot exceed the kept layers (layer {config.layer})"
        )
    return train.lora_layers or config.layer


def lora_items(
    backbone: Backbone,
    dataset: RecDataset,
    config: ModelConfig,
    train: TrainConfig,
    device: torch.device,
    cache_dir: Path | None = None,
    input_stats: bool = True,
) -> TopLayerItems:
    """Token states of layer L - m (from the unchanged backbone, cached), then truncate the backbone to
    L (in place), freeze it and wrap the top m blocks' projections in LoRA. ``input_stats``: set C's
    input standardisation from every item's state (one pass through the m blocks; a cost
    measurement skips it)."""
    from peft import LoraConfig, get_peft_model  # seconds to import; frozen runs never need it

    m = adapted_layers(config, train)
    first = config.layer - m
    tokens = token_states(backbone, dataset.item_texts, first, config.max_length, cache_dir=cache_dir)
    truncated = truncate(backbone.model, config.layer)
    truncated.requires_grad_(False)
    top = layer_view(truncated, first, config.layer)
    lora_config = LoraConfig(
        r=train.lora_rank,
        lora_alpha=train.lora_alpha,
        lora_dropout=train.lora_dropout,
        target_modules=list(train.lora_target_modules),
        bias="none",
    )
    peft_model = get_peft_model(top, lora_config).to(device)
    compressor = Compressor(backbone.hidden_size, config.dim, config.compressor_hidden).to(device)
    items = TopLayerItems(peft_model, tokens, compressor, config.pooling, device)
    if not input_stats:
        return items
    # C's input statistics from the untrained backbone (LoRA starts as the identity).
    peft_model.eval()
    with torch.no_grad():
        chunks = torch.arange(dataset.num_items).split(items.eval_batch)
        compressor.set_input_stats(torch.cat([items.encode(chunk)[2] for chunk in chunks]))
    return items


def merge_lora(items: TopLayerItems, first: int) -> dict[str, torch.Tensor]:
    """Fold the LoRA weights into the backbone (in place: the top blocks are shared with the truncated
    backbone) and return the tensors that changed, named as in the truncated backbone (the top view's
    block i is the backbone's block ``first + i``)."""
    peft_model = items.backbone
    # The LoRA-wrapped Linear layers are exactly the tensors merging changes.
    wrapped = [name for name, module in peft_model.named_modules() if hasattr(module, "lora_A")]
    changed = {name.removeprefix("base_model.model.") + ".weight" for name in wrapped}
    merged = peft_model.merge_and_unload().eval()  # type: ignore[operator]
    items.backbone = merged
    state = merged.state_dict()

    def renamed(name: str) -> str:
        return _LAYER_INDEX.sub(lambda match: f"layers.{int(match.group(1)) + first}.", name)

    return {renamed(name): tensor for name, tensor in state.items() if name in changed}
