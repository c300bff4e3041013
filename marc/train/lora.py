"""LoRA mode: adapters (peft) on the projections of the kept layers of the truncated backbone, and
merging them back into plain weights after training."""

from __future__ import annotations

import torch

from marc.backbone import Backbone, truncate
from marc.config import ModelConfig, TrainConfig
from marc.data import RecDataset
from marc.modules import Compressor
from marc.train.item_side import TextItems


def lora_items(
    backbone: Backbone, dataset: RecDataset, config: ModelConfig, train: TrainConfig, device: torch.device
) -> TextItems:
    """Truncate the backbone (in place), freeze it and wrap the kept layers' projections in LoRA."""
    from peft import LoraConfig, get_peft_model  # seconds to import; frozen runs never need it

    truncated = truncate(backbone.model, config.layer)
    truncated.requires_grad_(False)
    lora_config = LoraConfig(
        r=train.lora_rank,
        lora_alpha=train.lora_alpha,
        lora_dropout=train.lora_dropout,
        target_modules=list(train.lora_target_modules),
        bias="none",
    )
    peft_model = get_peft_model(truncated, lora_config).to(device)
    token_ids = backbone.tokenizer(dataset.item_texts, truncation=True, max_length=config.max_length)
    compressor = Compressor(backbone.hidden_size, config.dim, config.compressor_hidden).to(device)
    pad_id = backbone.tokenizer.pad_token_id
    items = TextItems(peft_model, token_ids["input_ids"], pad_id, compressor, config.pooling, device)
    # C's input statistics from the untrained backbone (LoRA starts as the identity).
    peft_model.eval()
    with torch.no_grad():
        chunks = torch.arange(dataset.num_items).split(items.eval_batch)
        compressor.set_input_stats(torch.cat([items.encode(chunk)[2] for chunk in chunks]))
    return items


def merge_lora(items: TextItems) -> dict[str, torch.Tensor]:
    """Fold the LoRA weights into the backbone (in place) and return the tensors that changed."""
    peft_model = items.backbone
    # The LoRA-wrapped Linear layers are exactly the tensors merging changes.
    wrapped = [name for name, module in peft_model.named_modules() if hasattr(module, "lora_A")]
    changed = {name.removeprefix("base_model.model.") + ".weight" for name in wrapped}
    merged = peft_model.merge_and_unload().eval()  # type: ignore[operator]
    items.backbone = merged
    return {name: tensor for name, tensor in merged.state_dict().items() if name in changed}
