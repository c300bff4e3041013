"""What a run computes: the plan (sizes, seeds, k values, datasets), and the table rows - each row a
label and the item vectors it scores (ids only, a layer's state at full size or PCA to k, MARC)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from marc.evaluate import CTRConfig

GENERATED_KINDS = ("synthetic", "entities")
"""Dataset specs built by a generator, which take the plan's size options."""

ML100K_DIR = "data/ml-100k"
"""Where `marc data get ml-100k` puts MovieLens-100K (`make experiments` runs it first)."""

DEFAULT_DATASETS = ("synthetic", f"movielens100k:{ML100K_DIR}?text=kar")
"""The generated data (no metadata but the text) and the real ratings with the KAR-style text (title,
year, genres). The titles-only text (`movielens100k:data/ml-100k?text=title`: the genre must come from
what the LLM knows) is left out of the default run for the 45-minute budget (a third of the work, for
a side question); `--datasets` adds it. The `entities` generator is retired from the experiments: 30
cold test items are too few to tell a win from noise, and its names' form leaks the category
(docs/training.md, "Surface check")."""


@dataclass(frozen=True)
class Plan:
    """Everything that decides what a run computes (saved in summary.json)."""

    size: str
    """'default' (the EXPERIMENTS.md run) or 'quick' (CI: tiny backbone, tiny data)."""
    backbone: str
    datasets: tuple[str, ...]
    seeds: tuple[int, ...]
    """Seeds of the downstream CTR model and of every trained compressor (the data stay fixed)."""
    dims: tuple[int, ...]
    """k values of the compression table."""
    dim: int
    """k of the layer sweep's PCA, the ablations and the beta sweep."""
    sweep_every: int
    """Probe every n-th layer (the final layer always)."""
    sweep_seeds: tuple[int, ...]
    betas: tuple[float, ...]
    """The beta sweep (the default beta and 0 are added)."""
    recon_weight: float
    """lambda of the '+ reconstruction' ablation."""
    generator_sizes: dict[str, int] = field(default_factory=dict)
    """num_items / num_users / interactions_per_user for the generated datasets (empty = defaults)."""
    ctr: CTRConfig = field(default_factory=CTRConfig)
    train_epochs: int = 20
    train_patience: int = 4
    train_batch_size: int = 256
    """Interactions per step of every trained compressor (frozen and LoRA)."""
    ablations: tuple[str, ...] = ("recon", "no_adapter", "no_kl", "linear_adapter")
    """Which ablations of MARC to train (names in ABLATIONS)."""
    lora_epochs: int = 0
    """> 0: also train MARC with LoRA for this many epochs at the served and the final layer, after C
    and A were trained on the frozen states (a warm start of ``train_epochs`` at
    ``train_batch_size``), on the focus datasets."""
    lora_layers: int = 2
    """m: LoRA on the top m kept layers, fed with cached token states of layer L - m."""
    lora_seeds: tuple[int, ...] = (0,)
    lora_batch_size: int = 512
    """Interactions per LoRA step. The steps take the rows of a few items each (`TrainConfig.
    item_batches`), so an epoch runs each item through the m layers about once whatever the size."""
    lora_lr: float = 1e-3
    lora_cost_steps: int = 0
    """> 0: time this many full-depth LoRA steps at the mid and the final layer (first dataset) and
    extrapolate an epoch (`marc.train.cost`)."""
    focus_datasets: tuple[str, ...] = ()
    """Dataset specs that also get the LoRA rows, the fixes of MARC against PCA and the replicates
    over data splits (empty = every dataset)."""
    fixes: bool = False
    """Train the cheap fixes of MARC at the served layer (PCA-initialised C, weight decay, betas,
    early stopping on validation cold GAUC) on the focus datasets."""
    split_seeds: tuple[int, ...] = ()
    """Replicate the focus datasets on these other data splits (the split's seed; the tables use
    seed 0): ids only, genre + year, TF-IDF-k, PCA-k and MARC at the served layer at each k."""
    pooling: str = "mean"
    max_length: int = 64
    backbone_batch_size: int = 32
    workers: int = 2
    resamples: int = 1000
    """Bootstrap replicates of every confidence interval (`marc.stats`)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def result_settings(self) -> dict[str, Any]:
        """The fields that change a job's result (the others only choose which jobs run), as JSON
        values: two runs agreeing on these give the same numbers for the same job."""
        return json.loads(json.dumps({name: self.to_dict()[name] for name in RESULT_SETTINGS}))


RESULT_SETTINGS = (
    "backbone",
    "generator_sizes",
    "ctr",
    "train_epochs",
    "train_patience",
    "train_batch_size",
    "lora_batch_size",
    "lora_lr",
    "pooling",
    "max_length",
)


def default_plan(**overrides: Any) -> Plan:
    """The EXPERIMENTS.md run: real SmolLM2; synthetic and MovieLens-100K (both texts); 3 seeds."""
    plan = Plan(
        size="default",
        backbone="smollm2",
        datasets=DEFAULT_DATASETS,
        seeds=(0, 1, 2),
        dims=(16, 64),
        dim=64,
        sweep_every=3,
        sweep_seeds=(0, 1, 2),
        betas=(),
        recon_weight=0.1,
        train_epochs=15,
        train_patience=3,
        train_batch_size=1024,
        ablations=(),  # the time budget; `--ablations no_adapter,no_kl,...` adds them
        lora_epochs=3,
        lora_layers=2,
        lora_seeds=(0, 1, 2),
        lora_batch_size=512,  # 129 steps per epoch on MovieLens-100K
        lora_lr=2e-4,
        lora_cost_steps=2,
        focus_datasets=(f"movielens100k:{ML100K_DIR}?text=kar",),
        fixes=True,
        split_seeds=(1, 2),
    )
    return replace(plan, **overrides)


def quick_plan(**overrides: Any) -> Plan:
    """CI size: tiny random backbone, a few hundred interactions, one seed; about a minute."""
    plan = Plan(
        size="quick",
        backbone="tiny",
        datasets=("synthetic",),
        seeds=(0,),
        dims=(8, 16),
        dim=16,
        sweep_every=1,
        sweep_seeds=(0,),
        betas=(1e-2,),
        recon_weight=0.1,
        generator_sizes={"num_items": 120, "num_users": 60, "interactions_per_user": 20},
        ctr=CTRConfig(epochs=2, patience=1, hidden=(16,)),
        train_epochs=2,
        train_patience=1,
        lora_epochs=1,
        lora_layers=1,
        lora_batch_size=256,
        lora_cost_steps=1,
        fixes=True,
        split_seeds=(1,),
        max_length=24,
        workers=1,
        resamples=200,
    )
    return replace(plan, **overrides)


@dataclass(frozen=True)
class Vectors:
    """How one set of item vectors is made from a dataset's pooled states."""

    kind: str
    """'ids' (no vectors), 'surface' (features of the text's form, `marc.baselines.surface_vectors`),
    the content baselines of `marc.content_baselines` - 'genre_year' (MovieLens genres + year),
    'tfidf' (TF-IDF of the text, SVD to k), 'random' (random vectors of size k, a control) -
    'full' (the pooled state), 'pca' (PCA to k of the raw state), 'pca_std' (PCA to k of the state
    standardised per channel, as C sees it), 'trained' (train_marc, frozen backbone) or 'lora'
    (train_marc with LoRA on the top m kept layers)."""
    layer: int | None = None
    dim: int | None = None
    overrides: tuple[tuple[str, Any], ...] = ()
    """ModelConfig / TrainConfig fields that differ from MARC's defaults (trained kinds)."""


@dataclass(frozen=True)
class Row:
    """One line of a results table: a label and the vectors it scores."""

    label: str
    vectors: Vectors
    group: str = ""
    """What the row varies in its table (e.g. 'k=64' or 'beta=0.01'); used by the plots."""


ABLATIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "recon": ("+ reconstruction (lambda={recon:g})", {"recon_weight": None}),
    "no_adapter": ("without A (dot product of z and the user)", {"use_adapter": False}),
    "no_kl": ("without the information constraint (beta=0)", {"beta": 0.0}),
    "linear_adapter": ("C and A of the same structure (A linear, 1 layer)", {"adapter_layers": 1}),
}
"""Ablation name -> (row label, MARC settings it changes; None = the plan's recon_weight)."""


def ids_only() -> Vectors:
    return Vectors("ids")


def surface() -> Vectors:
    return Vectors("surface")


def genre_year() -> Vectors:
    return Vectors("genre_year")


def tfidf(dim: int) -> Vectors:
    return Vectors("tfidf", None, dim)


def random_control(dim: int) -> Vectors:
    return Vectors("random", None, dim)


def full_state(layer: int) -> Vectors:
    return Vectors("full", layer)


def pca(layer: int, dim: int) -> Vectors:
    """PCA of the raw pooled state (its few huge channels dominate the components)."""
    return Vectors("pca", layer, dim)


def pca_std(layer: int, dim: int) -> Vectors:
    """PCA of the pooled state standardised per channel with C's statistics: what MARC sees."""
    return Vectors("pca_std", layer, dim)


def marc(layer: int, dim: int, **overrides: Any) -> Vectors:
    """MARC trained on frozen states; ``overrides`` are ModelConfig/TrainConfig fields."""
    return Vectors("trained", layer, dim, tuple(sorted(overrides.items())))


def lora(plan: Plan, layer: int, dim: int) -> Vectors:
    """MARC with LoRA on the top ``plan.lora_layers`` kept layers for ``plan.lora_epochs`` epochs."""
    m = min(plan.lora_layers, layer)
    return Vectors("lora", layer, dim, (("epochs", plan.lora_epochs), ("lora_layers", m)))


def sweep_rows(layers: Iterable[int], dim: int) -> list[Row]:
    """Per layer the PCA-k of the standardised state (what picks the mid layer: the states MARC sees)."""
    rows = [Row("ids only", ids_only())]
    rows += [Row(f"L{layer} PCA (standardised)", pca_std(layer, dim), "pca_std") for layer in layers]
    return rows


def compression_rows(
    final: int, mid: int, dims: Sequence[int], hidden_size: int, genres: bool = False
) -> list[Row]:
    """The compression table; ``genres``: the dataset has item genres (MovieLens), so the genre +
    year baseline is a row."""
    rows = [
        Row("ids only", ids_only()),
        Row("surface form of the text", surface()),
        *([Row("genre multi-hot + year", genre_year())] if genres else []),
        Row(f"final L{final} full ({hidden_size})", full_state(final)),
    ]
    for k in dims:
        group = f"k={k}"
        rows += [
            Row("random vectors (control)", random_control(k), group),
            Row("TF-IDF of the text + SVD", tfidf(k), group),
            Row(f"final L{final} + PCA (raw)", pca(final, k), group),
            Row(f"final L{final} + PCA (standardised)", pca_std(final, k), group),
            Row(f"final L{final} + C + A", marc(final, k), group),
            Row(f"mid L{mid} + PCA (standardised)", pca_std(mid, k), group),
            Row(f"MARC L{mid}", marc(mid, k), group),
        ]
    return rows


def ablation_rows(
    plan: Plan, final: int, mid: int, default_beta: float, served: int, focus: bool = True
) -> list[Row]:
    """The ablations, plus MARC cut at the served layer and at half depth (the usual default), so
    the choice for the default artifact is checked with MARC itself, not only with PCA; and on a
    focus dataset MARC with LoRA on the top m layers at the served and the final layer."""
    k = plan.dim
    rows = [Row(f"MARC L{mid} (C + A + beta*KL, beta={default_beta:g})", marc(mid, k))]
    for name in plan.ablations:
        label, settings = ABLATIONS[name]
        settings = {key: plan.recon_weight if value is None else value for key, value in settings.items()}
        rows.append(Row(label.format(recon=plan.recon_weight), marc(mid, k, **settings)))
    rows.append(Row(f"cut at the final layer L{final}", marc(final, k)))
    half = max(1, final // 2)
    for layer, why in ((served, "the served layer"), (half, "half depth")):
        if layer not in (mid, final) and not any(row.vectors == marc(layer, k) for row in rows):
            rows.append(Row(f"cut at {why} L{layer}", marc(layer, k)))
    if plan.lora_epochs > 0 and focus:
        for layer, where in ((served, f"the served layer L{served}"), (final, f"final L{final}")):
            vectors = lora(plan, layer, k)
            m = dict(vectors.overrides)["lora_layers"]
            epochs = f"{plan.lora_epochs} epoch{'s' if plan.lora_epochs > 1 else ''}"
            label = f"LoRA on the top {m} layers ({epochs}) at {where}"
            rows.append(Row(label, vectors))
    return rows


FIXES: tuple[tuple[str, dict[str, Any]], ...] = (
    ("C initialised at PCA-k", {"compressor_init": "pca"}),
    ("weight decay 1e-2", {"weight_decay": 1e-2}),
    ("early stop on valid cold GAUC", {"stop_metric": "gauc_cold"}),
)
"""The cheap fixes tried when MARC loses to PCA of its own layer (label, MARC settings)."""


def fix_rows(plan: Plan, served: int) -> list[Row]:
    """PCA of the served layer, MARC there as it is, and MARC with each cheap fix (k = plan.dim)."""
    k = plan.dim
    rows = [
        Row(f"L{served} PCA-{k} (standardised)", pca_std(served, k)),
        Row(f"MARC L{served} as it is", marc(served, k)),
    ]
    return rows + [Row(f"MARC L{served}, {label}", marc(served, k, **settings)) for label, settings in FIXES]


def replicate_rows(served: int, k: int, genres: bool) -> list[Row]:
    """The trimmed table of a replicate on another data split: MARC against the baselines that can be
    the strongest, at one k (the time budget; ids only, far below MARC on the main split, is left out)."""
    rows = [Row("genre multi-hot + year", genre_year())] if genres else []
    group = f"k={k}"
    return [
        *rows,
        Row("TF-IDF of the text + SVD", tfidf(k), group),
        Row(f"L{served} PCA (standardised)", pca_std(served, k), group),
        Row(f"MARC L{served}", marc(served, k), group),
    ]


def beta_rows(plan: Plan, mid: int, default_beta: float) -> list[Row]:
    betas = sorted({0.0, default_beta, *plan.betas})
    return [
        Row(
            f"beta={beta:g}",
            marc(mid, plan.dim) if beta == default_beta else marc(mid, plan.dim, beta=beta),
            f"{beta:g}",
        )
        for beta in betas
    ]
