"""What a LoRA epoch costs, measured rather than run: time a few real training steps (forward, backward
and optimiser step of LoRA + C + A on the dataset's batches) and extrapolate to an epoch.

For full-depth LoRA (``lora_layers`` 0) on the real backbone an epoch takes hours on 2 CPU cores, so
it is never run here; this gives the honest per-step number and what an epoch would take, for a user
who has the hardware to run it.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any

import numpy as np
import torch

from marc.backbone import Backbone, load_backbone
from marc.config import ModelConfig, TrainConfig
from marc.data import RecDataset
from marc.modules import TaskAdapter
from marc.train.loop import _Trainer, seed_everything, user_histories
from marc.train.lora import adapted_layers, lora_items


def measure_lora_cost(
    dataset: RecDataset,
    config: ModelConfig,
    train: TrainConfig,
    *,
    steps: int = 3,
    backbone: Backbone | None = None,
    cache_dir: Any = None,
) -> dict[str, Any]:
    """Time ``steps`` LoRA training steps (after one warm-up step) on ``dataset``'s first shuffled
    batches -> seconds per step and the extrapolated epoch: steps per epoch x the median step, plus
    the once-per-epoch refresh of every item's z (timed on a sample of items, scaled to all).
    Modifies ``backbone`` in place, as LoRA training does."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    train = TrainConfig(**{**train.to_dict(), "mode": "lora"})
    seed_everything(train.seed)
    device = torch.device(train.device)
    backbone = backbone or load_backbone(config.backbone, config.tiny)
    tick = time.perf_counter()
    # No input statistics: they take a pass over every item and do not change what a step costs.
    items = lora_items(backbone, dataset, config, train, device, cache_dir, input_stats=False)
    setup_seconds = time.perf_counter() - tick
    head = TaskAdapter(
        config.dim, dataset.num_users, config.adapter_hidden, config.adapter_layers, train.adapter_dropout
    ).to(device)
    histories = user_histories(dataset, train.history_len, train.seed)
    trainer = _Trainer(dataset, config, train, items, items.compressor, head, None, histories, device)
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for m in trainer.modules() for p in m.parameters()], "lr": train.lr},
            {"params": items.backbone_parameters(), "lr": train.lora_lr},
        ],
        weight_decay=train.weight_decay,
    )
    # The once-per-epoch refresh of every item's z, timed on a sample and scaled to all items.
    sample = min(dataset.num_items, 2 * items.eval_batch)
    tick = time.perf_counter()
    items.all_means(sample)
    refresh_seconds = (time.perf_counter() - tick) * dataset.num_items / sample
    table = torch.zeros(dataset.num_items, config.dim, device=device)  # history z: values do not matter

    data = dataset.train
    order = np.random.default_rng(train.seed).permutation(len(data))
    batches = [order[start : start + train.batch_size] for start in range(0, len(order), train.batch_size)]
    for module in [*trainer.modules(), *items.modules()]:
        module.train()
    timed: list[float] = []
    distinct: list[int] = []
    for rows in batches[: steps + 1]:
        tick = time.perf_counter()
        parts = trainer._step(data, rows, table)
        optimizer.zero_grad(set_to_none=True)
        parts.total.backward()
        optimizer.step()
        timed.append(time.perf_counter() - tick)
        distinct.append(len(np.unique(data.items[rows])))
    per_step = statistics.median(timed[1:] or timed)  # the first step pays one-off allocations
    steps_per_epoch = math.ceil(len(data) / train.batch_size)
    # The estimate is built from the reported (rounded) figures, so it adds up exactly as printed.
    seconds_per_step, refresh_seconds = round(per_step, 3), round(refresh_seconds, 2)
    return {
        "lora_layers": adapted_layers(config, train),
        "layer": config.layer,
        "batch_size": train.batch_size,
        "steps_timed": len(timed[1:] or timed),
        "seconds_per_step": seconds_per_step,
        "step_seconds": [round(t, 3) for t in timed],
        "distinct_items_per_step": round(float(np.mean(distinct)), 1),
        "steps_per_epoch": steps_per_epoch,
        "refresh_seconds": refresh_seconds,
        "setup_seconds": round(setup_seconds, 2),
        "epoch_seconds_estimate": seconds_per_step * steps_per_epoch + refresh_seconds,
        "threads": torch.get_num_threads(),
    }
