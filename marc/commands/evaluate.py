"""`marc evaluate`: score a checkpoint's item vectors in the downstream CTR harness, optionally next
to every baseline (ids only, final layer full / PCA / linear compressor, mid layer PCA)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from marc.commands.arguments import HelpFormatter, add_data_arguments, load_data

DESCRIPTION = """\
Score item vectors as frozen side features of a standard CTR model (user and item id embeddings +
the projected item vector + the user's history profile), trained on the train split, early-stopped
on validation AUC. Items never seen in training (cold items) have no id embedding, so cold AUC
measures what the vectors carry. Prints AUC and LogLoss on warm and cold test items; with
--baselines also the comparison table, all in the same harness and with the same seeds.
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="score a checkpoint's item vectors (and the baselines) in the downstream CTR harness",
        description=DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--checkpoint", type=Path, required=True, help="checkpoint folder written by `marc train`"
    )
    parser.add_argument(
        "--baselines",
        action="store_true",
        help="also score ids only, final layer full size / + PCA to k / + trained linear compressor, "
        "and the checkpoint's layer + PCA to k (loads the full backbone; trains one linear "
        "compressor per seed)",
    )
    parser.add_argument("--batch-size", type=int, default=32, help="items per backbone forward pass")
    parser.add_argument(
        "--out", type=Path, default=None, help="write the report as JSON here (default: don't)"
    )
    add_data_arguments(parser, default_data=None)
    parser.set_defaults(handler=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    from marc.backbone import load_backbone
    from marc.baselines import checkpoint_vectors, format_table, run_baselines, score
    from marc.checkpoint import read_config
    from records.errors import DataError

    try:
        config, extra = read_config(args.checkpoint)
        args.data = args.data or extra.get("data", {}).get("spec") or "synthetic"
        dataset = load_data(args)
        print(
            f"evaluating {args.checkpoint} ({config.backbone} L{config.layer}, k={config.dim}) on "
            f"{dataset.name}: {dataset.num_items} items ({int(dataset.cold_items.sum())} cold), "
            f"seeds {args.seeds}"
        )
        # The baselines need the full backbone; the checkpoint's vectors can reuse it (frozen mode).
        backbone = load_backbone(config.backbone, config.tiny) if args.baselines else None
        vectors = checkpoint_vectors(
            args.checkpoint, dataset.item_texts, args.batch_size, args.cache_dir, backbone
        )
        if backbone is not None:
            rows = run_baselines(
                dataset,
                backbone,
                config.dim,
                mid_layer=config.layer,
                seeds=args.seeds,
                pooling=config.pooling,
                max_length=config.max_length,
                cache_dir=args.cache_dir,
                marc_vectors=vectors,
            )
        else:
            rows = [
                score(
                    f"MARC L{config.layer}",
                    dataset,
                    lambda seed: vectors,
                    args.seeds,
                    method="marc",
                    layer=config.layer,
                )
            ]
    except (DataError, ValueError, FileNotFoundError) as error:
        print(f"marc evaluate: error: {error}", file=sys.stderr)
        return 2

    print(format_table(rows))
    if args.out:
        report = {
            "checkpoint": str(args.checkpoint),
            "model": config.to_dict(),
            "data": args.data,
            "seeds": args.seeds,
            "rows": rows,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2, default=str))
        print(f"report written to {args.out}")
    return 0
