"""Downstream evaluation: how much do frozen item vectors help a standard CTR model?

The item vectors are side features of a small DNN over user and item id embeddings. Items unseen in
training (the cold items) have no trained id embedding: they share one "unknown item" embedding,
which training learns through item-id dropout (a random share of training rows sees the unknown id
too), so on cold items the model can only tell items apart through their vectors. That makes cold
AUC the measure of what the vectors carry; warm AUC shows whether they still add to the ids.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.decomposition import PCA
from torch import nn

from marc.ctr_metrics import auc, gauc, log_loss
from marc.data import Interactions, RecDataset
from marc.predictions import predictions_for, save_predictions
from marc.stats import sample_std

METRIC_KEYS: tuple[str, ...] = (
    "auc_all",
    "auc_warm",
    "auc_cold",
    "logloss_all",
    "logloss_warm",
    "logloss_cold",
    "gauc_warm",
    "gauc_cold",
    "valid_auc",
    "valid_auc_warm",
    "valid_auc_cold",
    "valid_gauc_cold",
)


@dataclass(frozen=True)
class CTRConfig:
    """The downstream model and its training. Small on purpose: one evaluation takes seconds on CPU."""

    embed_dim: int = 16
    hidden: tuple[int, ...] = (64, 32)
    epochs: int = 40
    batch_size: int = 256
    lr: float = 3e-3
    weight_decay: float = 1e-3
    patience: int = 4
    """Epochs without a better validation AUC before training stops (the best epoch is kept)."""
    item_id_dropout: float = 0.3
    """Share of training rows whose item id is replaced by the unknown id, so the model learns to
    score items it has no id embedding for (the cold items) from their vectors."""


class CTRModel(nn.Module):
    """DNN over user and item id embeddings and, when items have vectors, the projected item vector
    and the user's history profile (mean projected vector of the items they clicked, and of those
    they skipped, in train). Element-wise products give the MLP the user-item affinities directly,
    as factorisation models do, so it trains in a few epochs."""

    def __init__(self, num_users: int, num_item_slots: int, vector_dim: int, config: CTRConfig) -> None:
        super().__init__()
        e = config.embed_dim
        self.user = nn.Embedding(num_users, e)
        self.item = nn.Embedding(num_item_slots, e)  # slot 0 = unknown item
        self.project = nn.Linear(vector_dim, e) if vector_dim else None
        parts = 9 if vector_dim else 3
        layers: list[nn.Module] = []
        width = parts * e
        for h in config.hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)
        for table in (self.user, self.item):
            nn.init.normal_(table.weight, std=0.05)

    def forward(
        self,
        users: torch.Tensor,
        slots: torch.Tensor,
        vectors: torch.Tensor | None = None,
        clicked: torch.Tensor | None = None,
        skipped: torch.Tensor | None = None,
    ) -> torch.Tensor:
        u, i = self.user(users), self.item(slots)
        parts = [u, i, u * i]
        if self.project is not None and vectors is not None and clicked is not None and skipped is not None:
            v, pos, neg = self.project(vectors), self.project(clicked), self.project(skipped)
            parts += [v, u * v, pos, neg, v * pos, v * neg]
        return self.mlp(torch.cat(parts, dim=-1)).squeeze(-1)


def standardise(vectors: np.ndarray, fit_rows: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance per dimension, statistics from ``fit_rows`` only (the train items:
    nothing about valid/test items leaks into the features)."""
    fit = vectors[fit_rows].astype(np.float64)
    mean, std = fit.mean(0), fit.std(0)
    return ((vectors - mean) / np.where(std > 1e-8, std, 1.0)).astype(np.float32)


def pca_vectors(states: np.ndarray, dataset: RecDataset, dim: int, seed: int = 0) -> np.ndarray:
    """Project ``states`` onto their top ``dim`` principal components, fitted on train items only."""
    fit_rows = ~dataset.cold_items
    dim = min(dim, states.shape[1], int(fit_rows.sum()))
    pca = PCA(n_components=dim, random_state=seed).fit(states[fit_rows].astype(np.float64))
    return pca.transform(states.astype(np.float64)).astype(np.float32)


class _Harness:
    """Tensors for one dataset + vector set, and the training loop."""

    def __init__(self, dataset: RecDataset, vectors: np.ndarray | None, config: CTRConfig) -> None:
        self.dataset, self.config = dataset, config
        warm = ~dataset.cold_items
        # Slot 0 = unknown; warm items get slots 1..; cold items stay on 0 (never trained by id).
        slots = np.zeros(dataset.num_items, dtype=np.int64)
        slots[warm] = np.arange(1, int(warm.sum()) + 1)
        self.slots = torch.from_numpy(slots)
        self.num_slots = int(warm.sum()) + 1
        self.vectors = None if vectors is None else torch.from_numpy(standardise(vectors, warm))
        if self.vectors is not None:
            # Per-user sums over the train history, split by label: the history profile.
            train = dataset.train
            users = torch.from_numpy(train.users)
            clicks = torch.from_numpy(train.labels)
            item_vectors = self.vectors[torch.from_numpy(train.items)]
            shape = (dataset.num_users, self.vectors.shape[1])
            self.clicked_sum = torch.zeros(shape).index_add_(0, users, item_vectors * clicks[:, None])
            self.skipped_sum = torch.zeros(shape).index_add_(0, users, item_vectors * (1 - clicks)[:, None])
            self.clicked_count = torch.zeros(dataset.num_users).index_add_(0, users, clicks)
            self.skipped_count = torch.zeros(dataset.num_users).index_add_(0, users, 1 - clicks)

    def batch_inputs(
        self, split: Interactions, rows: np.ndarray | slice, own_row_in_history: bool = False
    ) -> dict[str, torch.Tensor]:
        """Model inputs for ``split[rows]``. For train rows (``own_row_in_history``) the row itself
        is taken out of the user's history profile, so its label never leaks into its features."""
        items = torch.from_numpy(split.items[rows])
        users = torch.from_numpy(split.users[rows])
        inputs = {"users": users, "slots": self.slots[items]}
        if self.vectors is None:
            return inputs
        vectors = self.vectors[items]
        clicked_sum, skipped_sum = self.clicked_sum[users], self.skipped_sum[users]
        clicked_count, skipped_count = self.clicked_count[users], self.skipped_count[users]
        if own_row_in_history:
            y = torch.from_numpy(split.labels[rows])
            clicked_sum = clicked_sum - y[:, None] * vectors
            skipped_sum = skipped_sum - (1 - y)[:, None] * vectors
            clicked_count, skipped_count = clicked_count - y, skipped_count - (1 - y)
        inputs["vectors"] = vectors
        inputs["clicked"] = clicked_sum / clicked_count.clamp(min=1)[:, None]
        inputs["skipped"] = skipped_sum / skipped_count.clamp(min=1)[:, None]
        return inputs

    @torch.no_grad()
    def predict(self, model: CTRModel, split: Interactions) -> np.ndarray:
        model.eval()
        out = []
        for start in range(0, len(split), 8192):
            inputs = self.batch_inputs(split, slice(start, start + 8192))
            out.append(torch.sigmoid(model(**inputs)))
        return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)

    def fit(self, seed: int) -> tuple[CTRModel, int]:
        config, train = self.config, self.dataset.train
        generator = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = CTRModel(
                self.dataset.num_users,
                self.num_slots,
                0 if self.vectors is None else self.vectors.shape[1],
                config,
            )
        optimiser = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        loss_fn = nn.BCEWithLogitsLoss()
        labels = torch.from_numpy(train.labels)
        valid = self.dataset.valid
        best_auc, best_epoch, best_state, stale = -1.0, 0, None, 0
        for epoch in range(1, config.epochs + 1):
            model.train()
            order = torch.randperm(len(train), generator=generator).numpy()
            for start in range(0, len(train), config.batch_size):
                rows = order[start : start + config.batch_size]
                inputs = self.batch_inputs(train, rows, own_row_in_history=True)
                drop = torch.rand(len(rows), generator=generator) < config.item_id_dropout
                inputs["slots"] = inputs["slots"].masked_fill(drop, 0)
                loss = loss_fn(model(**inputs), labels[rows])
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
            valid_auc = auc(valid.labels, self.predict(model, valid))
            if valid_auc > best_auc:
                best_auc, best_epoch, stale = valid_auc, epoch, 0
                best_state = {k: v.clone() for k, v in model.state_dict().items()}
            else:
                stale += 1
                if stale >= config.patience:
                    break
        if best_state is not None:
            model.load_state_dict(best_state)
        return model, best_epoch


def evaluate_vectors(
    dataset: RecDataset,
    vectors: np.ndarray | None,
    seed: int = 0,
    config: CTRConfig | None = None,
    predictions: Path | None = None,
) -> dict[str, float]:
    """Train the CTR model with ``vectors`` ([num_items, f] frozen side features, or None for ids
    only) on train, early-stop on valid AUC, and score test: AUC and LogLoss on all, warm and cold
    rows, GAUC (`marc.ctr_metrics.gauc`) on warm and cold rows, the valid AUCs and cold GAUC (for
    choosing between vector sets without looking at test), and bytes per
    item of the vectors in float32 and float16. ``predictions``: also write the per-row test
    probabilities there (`marc.predictions` format), for paired comparisons with `marc.stats`."""
    config = config or CTRConfig()
    if vectors is not None:
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] != dataset.num_items:
            raise ValueError(
                f"vectors must be [num_items={dataset.num_items}, f], got shape {tuple(vectors.shape)}"
            )
        if not np.isfinite(vectors).all():
            raise ValueError("vectors contain NaN or infinite values")
    started = time.perf_counter()
    # The model is tiny: one thread is faster, and on a busy machine intra-op threads that wait
    # for each other make training many times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        harness = _Harness(dataset, vectors, config)
        model, best_epoch = harness.fit(seed)
        test_probs, valid_probs = harness.predict(model, dataset.test), harness.predict(model, dataset.valid)
    finally:
        torch.set_num_threads(threads)
    result: dict[str, float] = {}
    for prefix, split, probs in (("", dataset.test, test_probs), ("valid_", dataset.valid, valid_probs)):
        cold = dataset.cold_items[split.items]
        for part, mask in (("all", np.ones_like(cold)), ("warm", ~cold), ("cold", cold)):
            labels = split.labels[mask]
            users = split.users[mask]
            if prefix:
                result[f"valid_auc{'' if part == 'all' else '_' + part}"] = auc(labels, probs[mask])
                if part == "cold":
                    result["valid_gauc_cold"] = gauc(labels, probs[mask], users)
            else:
                result[f"auc_{part}"] = auc(labels, probs[mask])
                result[f"logloss_{part}"] = log_loss(labels, probs[mask])
                if part != "all":
                    result[f"gauc_{part}"] = gauc(labels, probs[mask], users)
    dim = 0 if vectors is None else vectors.shape[1]
    if predictions is not None:
        save_predictions(
            predictions,
            predictions_for(
                dataset.test, test_probs, dataset.cold_items, dataset=dataset.name, seed=seed, dim=dim
            ),
        )
    result.update(
        dim=dim,
        bytes_per_item_fp32=4 * dim,
        bytes_per_item_fp16=2 * dim,
        best_epoch=best_epoch,
        seed=seed,
        seconds=round(time.perf_counter() - started, 3),
    )
    return result


def summarise_runs(runs: list[dict[str, float]]) -> dict[str, Any]:
    """Per-seed results of one vector set -> each metric's mean, ``<metric>_std`` (sample std, ddof=1;
    NaN for one seed), the seeds and the per-seed ``runs``."""
    summary: dict[str, Any] = {
        key: runs[0][key] for key in ("dim", "bytes_per_item_fp32", "bytes_per_item_fp16")
    }
    for key in METRIC_KEYS:
        values = np.array([run[key] for run in runs], dtype=np.float64)
        summary[key] = float(values.mean())
        summary[f"{key}_std"] = sample_std(values)
    summary["seconds"] = round(sum(run["seconds"] for run in runs), 3)
    summary["seeds"] = [run["seed"] for run in runs]
    summary["runs"] = runs
    return summary


def evaluate_seeds(
    dataset: RecDataset,
    vectors: np.ndarray | None,
    seeds: Sequence[int] = (0,),
    config: CTRConfig | None = None,
) -> dict[str, Any]:
    """``evaluate_vectors`` for each seed, summarised by `summarise_runs`."""
    return summarise_runs([evaluate_vectors(dataset, vectors, seed, config) for seed in seeds])
