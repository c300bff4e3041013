"""The comparison table: MARC against the usual ways of turning an LLM into item features, all scored
by the same downstream harness (`marc.evaluate`) on the same dataset and seeds.

Rows: ids only; final-layer state at full size; final layer + PCA to k; final layer + a trained
linear compressor (no task adaptation module A, no bottleneck); mid layer + PCA to k; MARC at k.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from marc.backbone import Backbone, Pooling
from marc.checkpoint import BACKBONE_DELTA_FILE, COMPRESSOR_FILE, load_checkpoint, read_config
from marc.config import ModelConfig, TrainConfig
from marc.data import RecDataset
from marc.evaluate import CTRConfig, evaluate_vectors, pca_vectors, summarise_runs
from marc.features import pooled_states
from marc.modules import Compressor
from marc.train.loop import train_marc

log = logging.getLogger(__name__)

VectorsForSeed = Callable[[int], "np.ndarray | None"]


def checkpoint_vectors(
    checkpoint_dir: Path,
    texts: list[str],
    batch_size: int = 32,
    cache_dir: Path | None = None,
    backbone: Backbone | None = None,
) -> np.ndarray:
    """The served vectors z (compressor mean) of a MARC checkpoint for ``texts``, [len(texts), k].

    A frozen-mode checkpoint (no backbone delta) given its full, unmodified ``backbone`` reuses it:
    its layer-L states equal the cut backbone's, and they are likely cached already (probe, training).
    Otherwise the checkpoint's own cut (and possibly LoRA-merged) backbone runs.
    """
    checkpoint_dir = Path(checkpoint_dir)
    config, _ = read_config(checkpoint_dir)
    if backbone is not None and not (checkpoint_dir / BACKBONE_DELTA_FILE).is_file():
        source = backbone
        compressor = Compressor(backbone.hidden_size, config.dim, config.compressor_hidden)
        compressor.load_state_dict(load_file(checkpoint_dir / COMPRESSOR_FILE))
    else:
        checkpoint = load_checkpoint(checkpoint_dir)
        encoder = checkpoint.encoder
        # The encoder's backbone is already cut at L, so its last hidden state is layer L.
        source = Backbone(
            encoder.backbone, checkpoint.tokenizer, config.backbone, config.layer, checkpoint.hidden_size
        )
        compressor = encoder.compressor
    states = pooled_states(
        source, texts, [config.layer], config.pooling, config.max_length, batch_size, cache_dir
    )[config.layer]
    with torch.inference_mode():
        mean, _ = compressor.eval()(torch.from_numpy(states))
    return mean.float().numpy()


def trained_compressor_vectors(
    dataset: RecDataset,
    states: np.ndarray,
    *,
    backbone_source: str,
    layer: int,
    dim: int,
    pooling: Pooling,
    max_length: int,
    seed: int,
    adapter: bool,
) -> np.ndarray:
    """Item vectors from a compressor trained on the click task over frozen ``states``.

    ``adapter=True`` is MARC (C + A + the default bottleneck); ``adapter=False`` is the plain linear
    compressor baseline (no A, beta = 0, no reconstruction: z meets the user by a dot product).
    """
    model = ModelConfig(
        backbone=backbone_source, layer=layer, dim=dim, pooling=pooling, max_length=max_length
    )
    if not adapter:
        model.beta, model.recon_weight, model.compressor_hidden = 0.0, 0.0, 0
    result = train_marc(dataset, model, TrainConfig(seed=seed, use_adapter=adapter), pooled=states)
    return result.item_vectors()


def score(
    name: str,
    dataset: RecDataset,
    vectors_for_seed: VectorsForSeed,
    seeds: Sequence[int],
    ctr: CTRConfig | None = None,
    **info: Any,
) -> dict[str, Any]:
    """One table row: ``vectors_for_seed(seed)`` scored over ``seeds`` (mean, std, per-seed runs)."""
    log.info("scoring %s over seeds %s", name, list(seeds))
    runs = [evaluate_vectors(dataset, vectors_for_seed(seed), seed, ctr) for seed in seeds]
    return {"name": name, **info, **summarise_runs(runs)}


def run_baselines(
    dataset: RecDataset,
    backbone: Backbone,
    dim: int,
    *,
    mid_layer: int | None = None,
    seeds: Sequence[int] = (0,),
    pooling: Pooling = "mean",
    max_length: int = 64,
    cache_dir: Path | None = None,
    marc_vectors: np.ndarray | None = None,
    train_compressors: bool = True,
    ctr: CTRConfig | None = None,
) -> list[dict[str, Any]]:
    """Every row of the comparison table, each with the metrics of `marc.evaluate.evaluate_vectors`
    (mean over ``seeds`` plus ``<metric>_std``) and ``name``, ``method``, ``layer``.

    ``mid_layer`` defaults to half the depth. MARC's row uses ``marc_vectors`` (e.g. from a
    checkpoint) when given, else trains MARC with default settings at ``mid_layer`` for each seed.
    ``train_compressors=False`` skips the rows that need training (linear compressor, and MARC when
    no vectors are given).
    """
    final = backbone.num_layers
    mid = mid_layer or max(1, final // 2)
    states = pooled_states(
        backbone, dataset.item_texts, [mid, final], pooling, max_length, cache_dir=cache_dir
    )
    final_pca = pca_vectors(states[final], dataset, dim)
    mid_pca = pca_vectors(states[mid], dataset, dim)
    common = {"backbone_source": backbone.source, "pooling": pooling, "max_length": max_length}

    def trained(layer: int, adapter: bool) -> VectorsForSeed:
        return lambda seed: trained_compressor_vectors(
            dataset, states[layer], layer=layer, dim=dim, seed=seed, adapter=adapter, **common
        )

    rows = [
        score("ids only", dataset, lambda seed: None, seeds, ctr, method="ids", layer=None),
        score(
            f"final L{final} full",
            dataset,
            lambda seed: states[final],
            seeds,
            ctr,
            method="full",
            layer=final,
        ),
        score(
            f"final L{final} + PCA", dataset, lambda seed: final_pca, seeds, ctr, method="pca", layer=final
        ),
    ]
    if train_compressors:
        rows.append(
            score(
                f"final L{final} + linear C",
                dataset,
                trained(final, adapter=False),
                seeds,
                ctr,
                method="linear",
                layer=final,
            )
        )
    rows.append(
        score(f"mid L{mid} + PCA", dataset, lambda seed: mid_pca, seeds, ctr, method="pca", layer=mid)
    )
    if marc_vectors is not None:
        rows.append(
            score(f"MARC L{mid}", dataset, lambda seed: marc_vectors, seeds, ctr, method="marc", layer=mid)
        )
    elif train_compressors:
        rows.append(
            score(f"MARC L{mid}", dataset, trained(mid, adapter=True), seeds, ctr, method="marc", layer=mid)
        )
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """A markdown table of the rows: AUC and LogLoss on cold and warm test items, bytes per item."""
    header = (
        "| vectors | dim | bytes fp32/fp16 | AUC cold | AUC warm | LogLoss cold | LogLoss warm | valid AUC |"
    )
    lines = [header, "|---|---:|---:|---:|---:|---:|---:|---:|"]

    def cell(row: dict[str, Any], key: str) -> str:
        std = row.get(f"{key}_std", 0.0)
        return f"{row[key]:.4f}" + (f" ± {std:.4f}" if len(row.get("seeds", [])) > 1 else "")

    for row in rows:
        lines.append(
            f"| {row['name']} | {row['dim']} | {row['bytes_per_item_fp32']}/{row['bytes_per_item_fp16']} | "
            + " | ".join(
                cell(row, k) for k in ("auc_cold", "auc_warm", "logloss_cold", "logloss_warm", "valid_auc")
            )
            + " |"
        )
    return "\n".join(lines)
