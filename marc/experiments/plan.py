"""What a run computes: the plan (sizes, seeds, k values, datasets), and the table rows - each row a
label and the item vectors it scores (ids only, a layer's state at full size or PCA to k, MARC)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from marc.evaluate import CTRConfig

GENERATED_KINDS = ("synthetic", "entities")
"""Dataset specs built by a generator, which take the plan's size options."""


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
    lora_epochs: int = 0
    """> 0: also train MARC with LoRA for this many epochs at the mid and the final layer (seed 0)."""
    pooling: str = "mean"
    max_length: int = 64
    backbone_batch_size: int = 32
    workers: int = 2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_plan(**overrides: Any) -> Plan:
    """The EXPERIMENTS.md run: real SmolLM2, both generated datasets at their default sizes, 3 seeds."""
    plan = Plan(
        size="default",
        backbone="smollm2",
        datasets=("synthetic", "entities"),
        seeds=(0, 1, 2),
        dims=(16, 32, 64, 128),
        dim=64,
        sweep_every=1,
        sweep_seeds=(0,),
        betas=(1e-2, 1e-1),
        recon_weight=0.1,
        train_epochs=15,
        train_patience=3,
    )
    return replace(plan, **overrides)


def quick_plan(**overrides: Any) -> Plan:
    """CI size: tiny random backbone, a few hundred interactions, one seed; about a minute."""
    plan = Plan(
        size="quick",
        backbone="tiny",
        datasets=("synthetic", "entities"),
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
        max_length=24,
        workers=1,
    )
    return replace(plan, **overrides)


@dataclass(frozen=True)
class Vectors:
    """How one set of item vectors is made from a dataset's pooled states."""

    kind: str
    """'ids' (no vectors), 'full' (the pooled state), 'pca', 'trained' (train_marc, frozen backbone)
    or 'lora' (train_marc with LoRA on the kept layers)."""
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


def ids_only() -> Vectors:
    return Vectors("ids")


def full_state(layer: int) -> Vectors:
    return Vectors("full", layer)


def pca(layer: int, dim: int) -> Vectors:
    return Vectors("pca", layer, dim)


def marc(layer: int, dim: int, **overrides: Any) -> Vectors:
    """MARC trained on frozen states; ``overrides`` are ModelConfig/TrainConfig fields."""
    return Vectors("trained", layer, dim, tuple(sorted(overrides.items())))


def linear_compressor(layer: int, dim: int) -> Vectors:
    """The usual practice: a linear map trained on the click task, no A, no bottleneck."""
    return marc(layer, dim, use_adapter=False, beta=0.0, recon_weight=0.0)


def sweep_rows(layers: Iterable[int], dim: int) -> list[Row]:
    rows = [Row("ids only", ids_only())]
    for layer in layers:
        rows += [
            Row(f"L{layer} full", full_state(layer), "full"),
            Row(f"L{layer} PCA", pca(layer, dim), "pca"),
        ]
    return rows


def compression_rows(final: int, mid: int, dims: Sequence[int], hidden_size: int) -> list[Row]:
    rows = [Row("ids only", ids_only()), Row(f"final L{final} full ({hidden_size})", full_state(final))]
    for k in dims:
        group = f"k={k}"
        rows += [
            Row(f"final L{final} + PCA", pca(final, k), group),
            Row(f"final L{final} + linear C", linear_compressor(final, k), group),
            Row(f"mid L{mid} + PCA", pca(mid, k), group),
            Row(f"MARC L{mid}", marc(mid, k), group),
        ]
    return rows


def ablation_rows(plan: Plan, final: int, mid: int, default_beta: float, served: int) -> list[Row]:
    """The ablations, plus MARC cut at the served layer and at half depth (the usual default), so
    the choice for the default artifact is checked with MARC itself, not only with PCA."""
    k = plan.dim
    rows = [
        Row(f"MARC L{mid} (C + A + beta*KL, beta={default_beta:g})", marc(mid, k)),
        Row(f"+ reconstruction (lambda={plan.recon_weight:g})", marc(mid, k, recon_weight=plan.recon_weight)),
        Row("without A (dot product of z and the user)", marc(mid, k, use_adapter=False)),
        Row("without the information constraint (beta=0)", marc(mid, k, beta=0.0)),
        Row("C and A of the same structure (A linear, 1 layer)", marc(mid, k, adapter_layers=1)),
        Row(f"cut at the final layer L{final}", marc(final, k)),
    ]
    half = max(1, final // 2)
    for layer, why in ((served, "the served layer"), (half, "half depth")):
        if layer not in (mid, final) and not any(row.vectors == marc(layer, k) for row in rows):
            rows.append(Row(f"cut at {why} L{layer}", marc(layer, k)))
    if plan.lora_epochs > 0:
        epochs = plan.lora_epochs
        rows += [
            Row(f"LoRA ({epochs} epoch) at L{mid}", Vectors("lora", mid, k, (("epochs", epochs),))),
            Row(f"LoRA ({epochs} epoch) at final L{final}", Vectors("lora", final, k, (("epochs", epochs),))),
        ]
    return rows


def beta_rows(plan: Plan, mid: int, default_beta: float) -> list[Row]:
    betas = sorted({0.0, default_beta, *plan.betas})
    return [Row(f"beta={beta:g}", marc(mid, plan.dim, beta=beta), f"{beta:g}") for beta in betas]
