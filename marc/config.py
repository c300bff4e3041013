"""Model configuration: everything needed to rebuild a MARC encoder, saved inside every checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from marc.backbone import Pooling, TinySpec


@dataclass
class ModelConfig:
    backbone: str = "smollm2"
    """'smollm2', 'tiny', 'tiny:<seed>' or a local Hugging Face model folder."""
    tiny: TinySpec = field(default_factory=TinySpec)
    """Shape of the random backbone when backbone is 'tiny' (ignored otherwise)."""
    layer: int = 15
    """Cut layer L: keep the embeddings and the first L blocks."""
    pooling: Pooling = "mean"
    max_length: int = 64
    """Tokens per item text; longer texts are truncated."""
    dim: int = 64
    """k, the size of the compressed item vector z."""
    nested_dims: list[int] = field(default_factory=list)
    """Matryoshka prefixes: C is trained so that each z[:d] is a vector on its own (`marc.losses`,
    ``nested_loss``); ascending, the last equals ``dim``. Empty = only the full k is trained."""
    compressor_hidden: int = 0
    """0 = C is linear (mean and log-variance heads); >0 = one narrow GELU layer in front."""
    adapter_hidden: int = 256
    adapter_layers: int = 3
    """Depth of the task adaptation module A (deep, non-linear by design)."""
    beta: float = 1e-3
    """Weight of the KL information bottleneck on z."""
    recon_weight: float = 0.0
    """Weight of reconstructing the (stop-gradient) pooled backbone state from z; 0 = off."""

    def __post_init__(self) -> None:
        dims = list(self.nested_dims)
        if dims and (dims != sorted(set(dims)) or dims[0] < 1 or dims[-1] != self.dim):
            raise ValueError(
                f"nested_dims {dims} must be ascending, distinct, >= 1 and end at dim {self.dim} "
                "(the largest prefix is the full vector)"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        values = dict(raw)
        if isinstance(values.get("tiny"), dict):
            values["tiny"] = TinySpec(**values["tiny"])
        return cls(**values)


@dataclass
class TrainConfig:
    """How a MARC model is trained (saved next to ModelConfig in every checkpoint's config.json)."""

    mode: str = "frozen"
    """'frozen': backbone frozen, pooled states computed once; 'lora': LoRA on the kept layers."""
    epochs: int = 30
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-5
    seed: int = 0
    patience: int = 4
    """Stop after this many epochs without a better validation score (best weights are restored)."""
    stop_metric: str = "auc"
    """The validation score early stopping watches: 'auc' (all rows) or 'gauc_cold' (per-user AUC
    among the cold items: what the served vectors are for)."""
    compressor_init: str = "random"
    """'random' (PyTorch's default) or 'pca': C's mean head starts as the whitened top-k principal
    components of its normalised input (fitted on the warm items), so training starts from PCA-k."""
    history_len: int = 20
    """Positive train items per user pooled into the user's history vector."""
    adapter_dropout: float = 0.1
    use_adapter: bool = True
    """False = ablation 'MARC without A': z meets the user through a dot-product head."""
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    lora_layers: int = 0
    """LoRA on the top m kept layers only (their input, the token states of layer L - m, is computed
    once and cached); 0 = all kept layers (full-depth LoRA)."""
    warm_start_epochs: int = 0
    """LoRA mode: first train C and A on the unchanged layer-L states for up to this many epochs (as
    frozen mode does, early-stopped), then fine-tune with LoRA; 0 = LoRA from the first step."""
    warm_start_batch_size: int = 0
    """Interactions per step of the warm start (0 = ``batch_size``): the frozen runs' size, so C and
    A get as many steps as a frozen run does whatever the LoRA batch."""
    lora_module_lr: float = 0.0
    """LoRA mode: learning rate of C and A during the LoRA epochs (0 = ``lr``): after a warm start
    they need only small steps."""
    lora_keep_start: bool = True
    """LoRA mode: keep the warm start when no LoRA epoch beats its validation score (best epoch 0);
    False keeps the best LoRA epoch whatever, so a comparison measures what LoRA training did."""
    lora_head: bool = True
    """LoRA mode: A (with the user tower) trains along with LoRA and C; False keeps A as the warm start
    left it, so only the item side adapts (steps of a few items each would otherwise tune the user
    embeddings of those items' users alone)."""
    item_batches: bool = False
    """LoRA mode: each step takes the rows of a few items (items in a new random order each epoch),
    so every item's text runs through the m adapted layers about once per epoch instead of once per
    step it appears in: small steps (many per epoch) at the cost of about one pass over the items."""
    lora_lr: float = 2e-4
    """Learning rate of the LoRA weights (the modules on top use ``lr``)."""
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.mode not in ("frozen", "lora"):
            raise ValueError(f"train mode must be 'frozen' or 'lora', got {self.mode!r}")
        if self.lora_layers < 0:
            raise ValueError(f"lora_layers must be >= 0 (0 = all kept layers), got {self.lora_layers}")
        if self.stop_metric not in ("auc", "gauc_cold"):
            raise ValueError(f"stop_metric must be 'auc' or 'gauc_cold', got {self.stop_metric!r}")
        if self.compressor_init not in ("random", "pca"):
            raise ValueError(f"compressor_init must be 'random' or 'pca', got {self.compressor_init!r}")
        if self.compressor_init == "pca" and self.mode != "frozen":
            raise ValueError("compressor_init 'pca' is for frozen mode (LoRA starts from its warm start)")
        if self.epochs < 1 or self.batch_size < 1 or self.history_len < 1:
            raise ValueError("epochs, batch_size and history_len must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
