"""The comparison table: MARC against the usual ways of turning an LLM into item features, all scored
by the same downstream harness (`marc.evaluate`) on the same dataset and seeds.

Rows: ids only; final-layer state at full size; final layer + PCA to k; final layer + a trained
linear compressor (no task adaptation module A, no bottleneck); mid layer + PCA to k; MARC at k.
"""

from __future__ import annotations

import logging
import re
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

# Surface form of an item text, no knowledge: what a model could learn from the string alone.
SURFACE_FEATURES: tuple[str, ...] = (
    "characters",
    "words",
    "mean_word_length",
    "capitalised_share",
    "single_word",
    "starts_with_article",
    "has_digit",
    "has_non_ascii",
    "has_punctuation",
    "has_initials",
    "has_name_particle",
    "person_like",
    "year",
    "has_year",
    "has_parenthesis",
    "trailing_article",
    "vowel_share",
)
_ARTICLES = {"the", "a", "an", "la", "le", "les", "il", "el", "der", "die", "das"}
_NAME_PARTICLES = {"de", "da", "di", "del", "van", "von", "der", "du", "la", "le", "of"}
_YEAR = re.compile(r"\((\d{4})\)")


def _surface(text: str) -> list[float]:
    words = text.split()
    letters = [c for c in text.lower() if c.isalpha()]
    capitalised = [w[:1].isupper() for w in words]
    particles = [w.lower() in _NAME_PARTICLES for w in words]
    year = _YEAR.search(text)
    article_first = bool(words) and words[0].lower() in _ARTICLES
    # "Person-ness" from form alone: 2-4 words, each capitalised or a name particle, no article, no digit.
    person_like = (
        2 <= len(words) <= 4
        and all(c or p for c, p in zip(capitalised, particles, strict=True))
        and not article_first
        and not any(ch.isdigit() for ch in text)
    )
    return [
        len(text),
        len(words),
        float(np.mean([len(w) for w in words])) if words else 0.0,
        float(np.mean(capitalised)) if words else 0.0,
        len(words) == 1,
        article_first,
        any(ch.isdigit() for ch in text),
        any(ord(ch) > 127 for ch in text),
        any(ch in ".,'-:&!?" for ch in text),
        re.search(r"\b[A-Z]\.", text) is not None,
        any(particles),
        person_like,
        int(year.group(1)) if year else 0,
        year is not None,
        text.replace(year.group(0), "").count("(") > 0 if year else "(" in text,
        re.search(r", (The|A|An|La|Le|Il|Les|Das|Der|Die)\b", text) is not None,
        sum(c in "aeiouy" for c in letters) / len(letters) if letters else 0.0,
    ]


def surface_vectors(texts: Sequence[str]) -> np.ndarray:
    """[len(texts), len(SURFACE_FEATURES)] features of each text's surface form (length, words,
    capitalisation, "looks like a person's name", the year in "Title (Year)", ...). A baseline
    for knowledge claims: what a model gets from the string's form without knowing what it names."""
    return np.asarray([_surface(text) for text in texts], dtype=np.float32)


def person_oracle_vectors(dataset: RecDataset) -> np.ndarray:
    """[num_items, 1]: 1 for entities whose (hidden) category is a kind of person. Not a surface
    feature: an oracle that knows only "is this a person" (needs the generator's `meta`)."""
    from marc.data.entities import PERSON_CATEGORIES

    if "item_category" not in dataset.meta:
        raise ValueError(f"the person oracle needs the entities generator's meta; {dataset.name} has none")
    names = np.asarray(dataset.meta["categories"])[dataset.meta["item_category"]]
    return np.isin(names, list(PERSON_CATEGORIES)).astype(np.float32)[:, None]


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


def surface_check(
    dataset: RecDataset,
    seeds: Sequence[int],
    out_dir: Path,
    *,
    resamples: int = 2000,
    ctr: CTRConfig | None = None,
) -> list[dict[str, Any]]:
    """How much of the cold-item signal the text's surface form alone carries.

    Rows: ids only, the surface features (`surface_vectors`) and, on `entities`, the single
    "person-like form" feature and the person oracle (`person_oracle_vectors`);
    each scored by the downstream harness for every seed (per-row test predictions written to
    `out_dir`). Per row: cold and warm test AUC, mean and sample std (ddof=1) over seeds; for the
    first seed the 95% bootstrap CI over cold test items and the paired difference to ids only
    with its CI and verdict (`marc.stats.compare_predictions`).
    """
    from marc.predictions import load_predictions
    from marc.stats import compare_predictions, sample_std

    candidates: dict[str, np.ndarray | None] = {
        "ids only": None,
        "surface form": surface_vectors(dataset.item_texts),
    }
    if "item_category" in dataset.meta:  # entities: "is a person" read from the form, and known
        person_like = SURFACE_FEATURES.index("person_like")
        candidates["person-like form"] = candidates["surface form"][:, [person_like]]
        candidates["person oracle"] = person_oracle_vectors(dataset)
    rows = []
    for name, vectors in candidates.items():
        slug = name.replace(" ", "-")
        runs = [
            evaluate_vectors(dataset, vectors, seed, ctr, predictions=out_dir / f"{slug}-seed{seed}.npz")
            for seed in seeds
        ]
        log.info("%s: cold AUC %s", name, [round(run["auc_cold"], 4) for run in runs])
        row: dict[str, Any] = {"name": name, "dim": runs[0]["dim"], "seeds": list(seeds)}
        for key in ("auc_cold", "auc_warm"):
            row[key] = float(np.mean([run[key] for run in runs]))
            row[f"{key}_std"] = sample_std([run[key] for run in runs])
        rows.append(row)
    baseline = load_predictions(out_dir / f"ids-only-seed{seeds[0]}.npz")
    for row in rows:
        mine = load_predictions(out_dir / f"{row['name'].replace(' ', '-')}-seed{seeds[0]}.npz")
        row["vs_ids_only"] = compare_predictions(mine, baseline, part="cold", by="item", resamples=resamples)
    return rows


def format_surface_check(rows: list[dict[str, Any]]) -> str:
    """The rows of `surface_check` as a markdown table."""
    lines = [
        "| vectors | AUC cold (mean ± std over seeds) | AUC warm | AUC cold, 95% CI over items (first seed) "
        "| minus ids only, 95% CI | verdict |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        comparison = row["vs_ids_only"]
        a, diff = comparison["auc_a"], comparison["difference"]
        lines.append(
            f"| {row['name']} | {row['auc_cold']:.4f}"
            + (f" ± {row['auc_cold_std']:.4f}" if len(row["seeds"]) > 1 else "")
            + f" | {row['auc_warm']:.4f} | "
            f"{a['estimate']:.4f} [{a['low']:.4f}, {a['high']:.4f}] | "
            f"{diff['estimate']:+.4f} [{diff['low']:+.4f}, {diff['high']:+.4f}] | {comparison['verdict']} |"
        )
    cold = rows[0]["vs_ids_only"]
    lines.append(
        f"\n{cold['rows']} cold test rows on {cold['auc_a']['groups']} cold test items; "
        f"{cold['difference']['resamples']} bootstrap resamples of the items."
    )
    return "\n".join(lines)
