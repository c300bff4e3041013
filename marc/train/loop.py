"""The training loop: C + A (frozen) or LoRA + C + A (lora) on a dataset's clicks, early-stopped on
validation AUC, and the checkpoint it writes.

Two modes:
  * ``frozen`` - the backbone never changes, so its pooled states at layer L are computed once
    (cached on disk by `marc.features`) and each step only runs C and A: seconds to minutes on CPU.
  * ``lora``   - LoRA adapters (peft, `marc.train.lora`) on the attention projections of the top m
    kept layers (``lora_layers``; 0 = all L), fed with the cached token states of layer L - m, so a
    step runs m blocks. After training the adapters are merged and only the changed backbone tensors
    are saved (``backbone_delta``).

The user side of the task is a user id embedding plus the mean z of up to ``history_len`` of the
user's positive training items (never including the item being scored).

With ``ModelConfig.nested_dims`` the objective is applied to each prefix z[:d], each with its own
head (`marc.modules.PrefixHeads`) and the losses averaged (`marc.losses.nested_loss`); early stopping
then watches the mean validation AUC over the prefixes, and the metrics hold each prefix's AUCs under
``nested``.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from marc.backbone import Backbone, load_backbone
from marc.checkpoint import save_checkpoint
from marc.config import ModelConfig, TrainConfig
from marc.ctr_metrics import auc, format_metric, gauc, log_loss, probabilities
from marc.data import Interactions, RecDataset
from marc.encoder import ItemEncoder
from marc.features import pooled_states
from marc.losses import (
    LossParts,
    Reconstruction,
    kl_to_standard_normal,
    marc_loss,
    nested_loss,
    sample_z,
    task_bce,
)
from marc.modules import Compressor, DotProductHead, PrefixHeads, TaskAdapter
from marc.train.item_side import FrozenItems, ItemSide, TopLayerItems
from marc.train.lora import adapted_layers, lora_items, merge_lora

log = logging.getLogger(__name__)

EVAL_BATCH = 4096
"""Interactions scored per forward pass at evaluation (no gradients, so large is fine)."""


@dataclass
class TrainResult:
    compressor: Compressor
    adapter: nn.Module
    """A (TaskAdapter) or, with ``use_adapter=False``, the dot-product head; includes the user tower."""
    metrics: dict[str, Any]
    """valid/test AUC and LogLoss (all, warm, cold items), best_epoch, epochs_run, seconds, ..."""
    history: list[dict[str, float]]
    """One entry per epoch: train loss parts and validation AUC."""
    vectors: np.ndarray
    """Served z (the mean of C) for every item of the dataset, float32 [num_items, k]."""
    encoder: ItemEncoder | None = None
    """LoRA mode: the merged truncated backbone + C (what `load_checkpoint` rebuilds)."""
    checkpoint_dir: Path | None = None

    def item_vectors(self) -> np.ndarray:
        return self.vectors


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def user_histories(dataset: RecDataset, history_len: int, seed: int) -> np.ndarray:
    """int64 [num_users, history_len]: a random subset (fixed by seed) of each user's positive train
    items, padded with -1. Interactions carry no timestamps, so "recent" is not available."""
    rng = np.random.default_rng(seed)
    histories = np.full((dataset.num_users, history_len), -1, dtype=np.int64)
    positives = dataset.train.labels > 0.5
    users, items = dataset.train.users[positives], dataset.train.items[positives]
    order = np.argsort(users, kind="stable")
    users, items = users[order], items[order]
    starts = np.searchsorted(users, np.arange(dataset.num_users))
    ends = np.searchsorted(users, np.arange(dataset.num_users), side="right")
    for user in range(dataset.num_users):
        own = np.unique(items[starts[user] : ends[user]])
        if len(own) > history_len:
            own = rng.choice(own, history_len, replace=False)
        histories[user, : len(own)] = own
    return histories


@dataclass
class _Trainer:
    dataset: RecDataset
    config: ModelConfig
    train: TrainConfig
    items: ItemSide
    compressor: Compressor
    head: nn.Module
    """A single head, or `PrefixHeads` (one per nested prefix)."""
    recon: nn.Module | None
    """`Reconstruction`, or one per nested prefix (a ModuleDict keyed by str(d))."""
    histories: np.ndarray
    device: torch.device
    history: list[dict[str, float]] = field(default_factory=list)

    def modules(self) -> list[nn.Module]:
        return [m for m in (self.compressor, self.head, self.recon) if m is not None]

    def fit(self, start_auc: float = -1.0) -> tuple[int, int]:
        """Train with early stopping on validation AUC; restores the best epoch. -> (best, run).
        ``start_auc``: validation AUC of the weights as they are (a warm start); when no epoch beats
        it, those weights are kept and the best epoch is 0."""
        train = self.train
        frozen_head = train.mode == "lora" and not train.lora_head
        trained = [m for m in self.modules() if not (frozen_head and m is self.head)]
        for parameter in self.head.parameters():
            parameter.requires_grad_(not frozen_head)
        module_params = [p for m in trained for p in m.parameters()]
        module_lr = train.lora_module_lr if train.mode == "lora" and train.lora_module_lr else train.lr
        groups: list[dict[str, Any]] = [{"params": module_params, "lr": module_lr}]
        backbone_params = self.items.backbone_parameters()
        if backbone_params:
            groups.append({"params": backbone_params, "lr": train.lora_lr})
        optimizer = torch.optim.AdamW(groups, weight_decay=train.weight_decay)
        rng = np.random.default_rng(train.seed)
        data = self.dataset.train
        lora = train.mode == "lora"
        # LoRA mode: history vectors come from a table refreshed once per epoch (running the backbone
        # over every history item each step would cost H times more); frozen mode recomputes them.
        table = self.items.all_means(self.dataset.num_items).to(self.device) if lora else None

        best_auc, best_epoch, best_state, stale = start_auc, 0, self._snapshot(), 0
        epochs = tqdm(range(1, train.epochs + 1), desc=f"train ({train.mode})", unit="epoch")
        epoch = 0
        for epoch in epochs:
            for m in [*self.modules(), *self.items.modules()]:
                m.train()
            epoch_started = time.perf_counter()
            order = (
                _item_major(data.items, rng) if lora and train.item_batches else rng.permutation(len(data))
            )
            sums = {"loss": 0.0, "bce": 0.0, "kl": 0.0, "recon": 0.0}
            batches = range(0, len(order), train.batch_size)
            for start in tqdm(batches, desc=f"epoch {epoch}", unit="batch", leave=False, disable=not lora):
                rows = order[start : start + train.batch_size]
                parts = self._step(data, rows, table)
                optimizer.zero_grad(set_to_none=True)
                parts.total.backward()
                optimizer.step()
                for name, value in zip(sums, (parts.total, parts.bce, parts.kl, parts.recon), strict=True):
                    sums[name] += float(value.detach()) * len(rows)
            step_seconds = time.perf_counter() - epoch_started
            means = self.items.all_means(self.dataset.num_items).to(self.device)
            table = means if lora else None
            valid = self.evaluate(self.dataset.valid, means)
            prefix_aucs = self.prefix_aucs(self.dataset.valid, means)
            if prefix_aucs:
                # Nested: every prefix counts, so the stopping score is their mean AUC.
                valid = {**valid, "auc_prefix_mean": float(np.nanmean(list(prefix_aucs.values())))}
            record = {"epoch": epoch, **{k: v / len(order) for k, v in sums.items()}, **valid}
            # Wall time of the epoch: its training steps, and with the refresh of every item's z and
            # the validation pass.
            record["train_seconds"] = round(step_seconds, 3)
            record["seconds"] = round(time.perf_counter() - epoch_started, 3)
            self.history.append(record)
            log.info(
                "epoch %d: loss %.4f (bce %.4f kl %.2f recon %.4f) valid AUC %s warm %s cold %s",
                epoch,
                record["loss"],
                record["bce"],
                record["kl"],
                record["recon"],
                *(format_metric(valid.get(k)) for k in ("auc", "auc_warm", "auc_cold")),
            )
            epochs.set_postfix(loss=f"{record['loss']:.4f}", valid_auc=format_metric(valid.get("auc")))
            # An undefined AUC (valid holds one class only) counts as 0: the first epoch is kept.
            watched = valid.get("auc_prefix_mean", valid[train.stop_metric])
            score = 0.0 if math.isnan(watched) else watched
            if score > best_auc:
                best_auc, best_epoch, best_state, stale = score, epoch, self._snapshot(), 0
            else:
                stale += 1
                if stale >= train.patience:
                    log.info("early stop: no better validation AUC for %d epochs", stale)
                    break
        epochs.close()
        self._restore(best_state)
        return best_epoch, epoch

    def _step(self, data: Interactions, rows: np.ndarray, table: torch.Tensor | None) -> LossParts:
        users = torch.from_numpy(data.users[rows]).to(self.device)
        items = torch.from_numpy(data.items[rows]).to(self.device)
        labels = torch.from_numpy(data.labels[rows]).to(self.device)
        hist, mask = self._history(data.users[rows], data.items[rows])
        if table is not None:
            # Each distinct item of the batch runs through the backbone blocks once.
            needed, inverse = torch.unique(items, return_inverse=True)
            all_mean, all_logvar, all_states = self.items.encode(needed)
            mean, logvar, states = all_mean[inverse], all_logvar[inverse], all_states[inverse]
            history_z = table[hist]
        else:
            # One C pass over the targets and the history items together (frozen mode: cheap).
            needed, inverse = torch.unique(torch.cat([items, hist.flatten()]), return_inverse=True)
            all_mean, all_logvar, all_states = self.items.encode(needed)
            target = inverse[: len(items)]
            mean, logvar, states = all_mean[target], all_logvar[target], all_states[target]
            history_z = all_mean[inverse[len(items) :]].view(*hist.shape, -1)
        z = sample_z(mean, logvar)
        if not isinstance(self.head, PrefixHeads):
            logits = self.head(z, users, history_z, mask)
            recon = self.recon(z, states) if self.recon is not None else torch.zeros((), device=self.device)
            return marc_loss(
                task_bce(logits, labels),
                kl_to_standard_normal(mean, logvar),
                recon,
                beta=self.config.beta,
                recon_weight=self.config.recon_weight,
            )
        parts = []
        for d in self.head.dims:  # the objective of each prefix z[:d] (marc.losses, nested training)
            recon = torch.zeros((), device=self.device)
            if self.recon is not None:
                recon = self.recon[str(d)](z[:, :d], states)  # type: ignore[index]
            parts.append(
                marc_loss(
                    task_bce(self.head(z, users, history_z, mask, dim=d), labels),
                    kl_to_standard_normal(mean[:, :d], logvar[:, :d]),
                    recon,
                    beta=self.config.beta,
                    recon_weight=self.config.recon_weight,
                )
            )
        return nested_loss(parts)

    def logits(self, split: Interactions, means: torch.Tensor, dim: int | None = None) -> np.ndarray:
        """Click logits for every interaction of a split, scored with served z (the means); ``dim``:
        with the head of that nested prefix (default: the full k)."""
        self.head.eval()
        out = []
        with torch.no_grad():
            for start in range(0, len(split), EVAL_BATCH):
                users, items = (
                    split.users[start : start + EVAL_BATCH],
                    split.items[start : start + EVAL_BATCH],
                )
                hist, mask = self._history(users, items)
                inputs = (
                    means[torch.from_numpy(items).to(self.device)],
                    torch.from_numpy(users).to(self.device),
                    means[hist],
                    mask,
                )
                logits = self.head(*inputs) if dim is None else self.head(*inputs, dim=dim)
                out.append(logits.cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)

    def evaluate(self, split: Interactions, means: torch.Tensor) -> dict[str, float]:
        logits = self.logits(split, means)
        cold = self.dataset.cold_items[split.items]
        result: dict[str, float] = {}
        for suffix, rows in (("", np.ones_like(cold)), ("_warm", ~cold), ("_cold", cold)):
            result[f"auc{suffix}"] = auc(split.labels[rows], logits[rows])
            result[f"logloss{suffix}"] = log_loss(split.labels[rows], probabilities(logits[rows]))
        result["gauc_cold"] = gauc(split.labels[cold], logits[cold], split.users[cold])
        return result

    def prefix_aucs(self, split: Interactions, means: torch.Tensor) -> dict[int, float]:
        """Nested training: AUC of each prefix's head on ``split`` (empty without nesting)."""
        if not isinstance(self.head, PrefixHeads):
            return {}
        return {d: auc(split.labels, self.logits(split, means, d)) for d in self.head.dims}

    def _history(self, users: np.ndarray, items: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """History item indices (pads as 0) and mask for a batch; the scored item is masked out so a
        positive never sees itself in its own history."""
        hist = self.histories[users]
        mask = (hist >= 0) & (hist != items[:, None])
        hist = torch.from_numpy(np.where(hist >= 0, hist, 0)).to(self.device)
        return hist, torch.from_numpy(mask).to(self.device)

    def _snapshot(self) -> list[dict[str, torch.Tensor]]:
        """Copies of the trained weights: C, the head, the decoder and (LoRA) the adapter weights -
        not the frozen backbone."""
        snapshot = [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in self.modules()]
        if isinstance(self.items, TopLayerItems):
            state = self.items.backbone.state_dict()
            snapshot.append({k: v.detach().clone() for k, v in state.items() if "lora_" in k})
        return snapshot

    def _restore(self, snapshot: list[dict[str, torch.Tensor]]) -> None:
        for module, state in zip(self.modules(), snapshot, strict=False):
            module.load_state_dict(state)
        if isinstance(self.items, TopLayerItems):
            self.items.backbone.load_state_dict(snapshot[-1], strict=False)


def _item_major(items: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Row order of an epoch with item batches: items in a random order, each item's rows together
    (shuffled among themselves), so a step of B rows holds the rows of a few items."""
    rank = rng.permutation(int(items.max()) + 1)[items]
    return np.lexsort((rng.random(len(items)), rank))


def _backbone_info(config: ModelConfig, backbone: Backbone | None, hidden_size: int) -> dict[str, Any]:
    if backbone is None:  # frozen run on given pooled states: only the width is known
        return {
            "source": config.backbone,
            "architecture": None,
            "total_layers": None,
            "hidden_size": hidden_size,
        }
    return {
        "source": backbone.source,
        "architecture": type(backbone.model).__name__,
        "total_layers": backbone.num_layers,
        "hidden_size": backbone.hidden_size,
    }


@contextmanager
def _threads(count: int | None) -> Iterator[None]:
    """Frozen-mode steps are tiny matmuls: on CPU one intra-op thread beats two, by ~10x on a busy
    2-core machine (thread hand-offs cost more than the work)."""
    previous = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _json_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """The dataset description without its arrays (generators keep ground-truth matrices in meta)."""
    return {k: v for k, v in meta.items() if not isinstance(v, np.ndarray)}


def _check_inputs(dataset: RecDataset, config: ModelConfig, backbone: Backbone | None) -> None:
    if len(dataset.train) == 0 or len(dataset.valid) == 0:
        raise ValueError(f"dataset {dataset.name!r}: train and valid splits must not be empty")
    for name in ("train", "valid", "test"):
        split: Interactions = getattr(dataset, name)
        if len(split) and (split.items.max() >= dataset.num_items or split.users.max() >= dataset.num_users):
            raise ValueError(f"dataset {dataset.name!r}: {name} split has item/user indices out of range")
    if backbone is not None and not 1 <= config.layer <= backbone.num_layers:
        raise ValueError(
            f"layer must be in 1..{backbone.num_layers} for backbone {backbone.source!r}, got {config.layer}"
        )


def _warm_start(trainer: _Trainer, items: TopLayerItems, train: TrainConfig) -> tuple[float, dict[str, Any]]:
    """Frozen-mode training of C and A (``warm_start_epochs``, early-stopped) on the pooled states of
    the unchanged layer L. -> (its validation AUC, what it did)."""
    tick = time.perf_counter()
    with torch.no_grad():
        chunks = torch.arange(trainer.dataset.num_items).split(items.eval_batch)
        items.backbone.eval()
        pooled = torch.cat([items.encode(chunk)[2] for chunk in chunks])
    batch = train.warm_start_batch_size or train.batch_size
    frozen = TrainConfig(
        **{**train.to_dict(), "mode": "frozen", "epochs": train.warm_start_epochs, "batch_size": batch}
    )
    warm = _Trainer(
        trainer.dataset,
        trainer.config,
        frozen,
        FrozenItems(pooled, items.compressor),
        items.compressor,
        trainer.head,
        trainer.recon,
        trainer.histories,
        trainer.device,
    )
    with logging_redirect_tqdm(), _threads(1 if trainer.device.type == "cpu" else None):
        best, run = warm.fit()
    means = items.all_means(trainer.dataset.num_items).to(trainer.device)
    valid = trainer.evaluate(trainer.dataset.valid, means)[train.stop_metric]
    prefixes = trainer.prefix_aucs(trainer.dataset.valid, means)
    watched = float(np.nanmean(list(prefixes.values()))) if prefixes else valid  # as `fit` scores it
    score = 0.0 if math.isnan(watched) else watched
    done = {
        "best_epoch": best,
        "epochs_run": run,
        "valid_auc": valid,
        "seconds": round(time.perf_counter() - tick, 2),
    }
    return score, done


def train_marc(
    dataset: RecDataset,
    config: ModelConfig,
    train: TrainConfig,
    *,
    pooled: np.ndarray | None = None,
    backbone: Backbone | None = None,
    out_dir: Path | None = None,
    cache_dir: Path | None = None,
    data_spec: str | None = None,
) -> TrainResult:
    """Train C + A (frozen) or LoRA + C + A (lora) on ``dataset``'s clicks; write a checkpoint to
    ``out_dir`` if given.

    Frozen mode: ``pooled`` is the [num_items, d] pooled state matrix at ``config.layer``; when None
    it is computed from ``backbone`` (loaded from ``config.backbone`` if None) by
    `marc.features.pooled_states` and cached under ``cache_dir``. LoRA mode uses ``backbone`` (or
    loads it) and modifies it IN PLACE: truncated to ``config.layer``, LoRA merged.
    """
    started = time.perf_counter()
    seed_everything(train.seed)
    device = torch.device(train.device)
    lora = train.mode == "lora"
    if backbone is None and (pooled is None or lora):
        backbone = load_backbone(config.backbone, config.tiny)
    _check_inputs(dataset, config, backbone)

    items: ItemSide
    setup: dict[str, Any] = {}
    if lora:
        assert backbone is not None
        tick = time.perf_counter()
        items = lora_items(backbone, dataset, config, train, device, cache_dir)
        # setup: the token states of layer L - m (read from the cache, or computed once) and C's stats
        setup = {
            "lora_layers": adapted_layers(config, train),
            "setup_seconds": round(time.perf_counter() - tick, 2),
        }
        hidden_size = backbone.hidden_size
    else:
        if pooled is None:
            assert backbone is not None
            texts, layers = dataset.item_texts, [config.layer]
            states = pooled_states(
                backbone, texts, layers, config.pooling, config.max_length, cache_dir=cache_dir
            )
            pooled = states[config.layer]
        if pooled.ndim != 2 or pooled.shape[0] != dataset.num_items:
            raise ValueError(
                f"pooled must be [{dataset.num_items}, d] (one row per item), got {pooled.shape}"
            )
        hidden_size = pooled.shape[1]
        compressor = Compressor(hidden_size, config.dim, config.compressor_hidden).to(device)
        states = torch.as_tensor(pooled, dtype=torch.float32, device=device)
        compressor.set_input_stats(states)
        if train.compressor_init == "pca":
            compressor.init_from_pca(states[torch.from_numpy(~dataset.cold_items)])
        items = FrozenItems(states, compressor)

    def make_head(dim: int) -> nn.Module:
        if train.use_adapter:
            return TaskAdapter(
                dim, dataset.num_users, config.adapter_hidden, config.adapter_layers, train.adapter_dropout
            )
        return DotProductHead(dim, dataset.num_users)

    head: nn.Module
    recon: nn.Module | None = None
    if config.nested_dims:
        head = PrefixHeads({d: make_head(d) for d in config.nested_dims})
        if config.recon_weight > 0:
            recon = nn.ModuleDict({str(d): Reconstruction(d, hidden_size) for d in config.nested_dims})
    else:
        head = make_head(config.dim)
        recon = Reconstruction(config.dim, hidden_size) if config.recon_weight > 0 else None
    histories = user_histories(dataset, train.history_len, train.seed)
    trainer = _Trainer(
        dataset,
        config,
        train,
        items,
        items.compressor,
        head.to(device),
        recon.to(device) if recon is not None else None,
        histories,
        device,
    )
    start_auc = -1.0
    if lora and train.warm_start_epochs > 0:
        # C and A first trained on the (still unchanged) pooled states of layer L, as in frozen mode;
        # LoRA then fine-tunes the top m layers together with them (early-stopped against this start).
        assert isinstance(items, TopLayerItems)
        start_auc, setup["warm_start"] = _warm_start(trainer, items, train)
        start_auc = start_auc if train.lora_keep_start else -1.0
    with logging_redirect_tqdm(), _threads(1 if not lora and device.type == "cpu" else None):
        best_epoch, epochs_run = trainer.fit(start_auc)

    encoder, backbone_delta = None, None
    if isinstance(items, TopLayerItems):
        backbone_delta = merge_lora(items, config.layer - adapted_layers(config, train))
        assert backbone is not None  # truncated to the kept layers, top blocks merged, in place
        encoder = ItemEncoder(backbone.model, items.compressor, config.pooling).eval()
    means = items.all_means(dataset.num_items)
    metrics: dict[str, Any] = {"mode": train.mode, **setup}
    for split_name in ("valid", "test"):
        split: Interactions = getattr(dataset, split_name)
        if len(split):
            metrics.update({f"{split_name}_{k}": v for k, v in trainer.evaluate(split, means).items()})
            for d, value in trainer.prefix_aucs(split, means).items():
                metrics.setdefault("nested", {}).setdefault(str(d), {})[f"{split_name}_auc"] = value
    vectors = means.cpu().numpy().astype(np.float32)
    metrics.update(
        best_epoch=best_epoch,
        epochs_run=epochs_run,
        steps_per_epoch=math.ceil(len(dataset.train) / train.batch_size),
        z_std=float(vectors.std(0).mean()),
        epoch_seconds=round(float(np.mean([r["seconds"] for r in trainer.history])), 3),
        epoch_train_seconds=round(float(np.mean([r["train_seconds"] for r in trainer.history])), 3),
        seconds=round(time.perf_counter() - started, 2),
    )
    log.info(
        "done in %.1f s: best epoch %d, valid AUC %s (warm %s, cold %s)",
        metrics["seconds"],
        best_epoch,
        *(format_metric(metrics.get(f"valid_{k}")) for k in ("auc", "auc_warm", "auc_cold")),
    )

    result = TrainResult(items.compressor.eval(), head.eval(), metrics, trainer.history, vectors, encoder)
    if out_dir is not None:
        result.checkpoint_dir = save_checkpoint(
            Path(out_dir),
            config,
            items.compressor,
            adapter=head,
            backbone_delta=backbone_delta,
            backbone_info=_backbone_info(config, backbone, hidden_size),
            metrics={**metrics, "history": trainer.history},
            extra={
                "train": train.to_dict(),
                "data": {
                    "spec": data_spec or dataset.name,
                    "num_items": dataset.num_items,
                    "num_users": dataset.num_users,
                    "meta": _json_meta(dataset.meta),
                },
            },
        )
    return result
