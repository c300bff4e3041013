"""`marc experiments`: the reproducible experiment run behind EXPERIMENTS.md (layer sweep, compression
table, ablations) writing summary.json, results.md and PNG plots."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from marc.commands.arguments import HelpFormatter, parse_dataset_specs, parse_seeds, parse_sizes

# The keys of marc.experiments.plan.ABLATIONS (importing the plan pulls in torch: `marc --help` stays fast).
ABLATION_NAMES = ("recon", "no_adapter", "no_kl", "linear_adapter")

DESCRIPTION = """\
One time-bounded run (aimed at 45 minutes on 2 CPU cores; EXPERIMENTS.md says what it took) that
measures the paper's claims on the real backbone, on synthetic data and MovieLens-100K with two item texts
("Title (Year)" and the KAR-style text with genres; fetch it first: `marc data get ml-100k`):
(1) layer sweep - each layer's pooled state, standardised per channel and PCA to k, scored by the
downstream CTR harness on cold and warm items over 3 seeds; (2) compression table at each k - ids only,
the text's surface form, genre multi-hot + year (MovieLens), TF-IDF + SVD to k, random vectors at k,
final/mid layer full size, final/mid + PCA (raw and standardised), final + trained linear compressor,
final + C + A, MARC; (3) MARC cut at other layers (--ablations adds more); on MovieLens-100K KAR
only: MARC with LoRA on the top m layers at the served and the final layer, cheap fixes of MARC
against PCA of its layer, and replicates on two more data splits; the measured full-depth LoRA
cost. Every row gets cold GAUC, AUC and LogLoss with 95% bootstrap CIs over items and seeds, and
every claim paired differences with CIs, Holm-adjusted p-values and verdicts, from the per-row test
predictions (--out/predictions). The backbone runs once per dataset (pooled states cached under
--cache-dir); the rest is fanned out over --workers processes. Writes summary.json (everything,
incl. the served-layer choice), results.md (tables) and plots to --out.
--quick: tiny random backbone, tiny data, one seed, for CI (about a minute).
"""


def _ablations(text: str) -> tuple[str, ...]:
    names = ABLATION_NAMES
    chosen = tuple(part.strip() for part in text.split(",") if part.strip() and part.strip() != "none")
    unknown = [name for name in chosen if name not in names]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown ablation {unknown[0]!r}: expected some of {', '.join(names)}"
        )
    return chosen


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "experiments",
        help="layer sweep, compression table and ablations on the real backbone -> reports/experiments",
        description=DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="CI size: tiny backbone and data, one seed")
    parser.add_argument(
        "--datasets",
        type=parse_dataset_specs,
        default=None,
        help="comma-separated dataset specs: 'synthetic', 'movielens100k:<dir>?text=title|kar', "
        "'movielens:<dir>', 'jsonl:<dir>' (default: synthetic and data/ml-100k with both texts; quick: "
        "synthetic)",
    )
    parser.add_argument(
        "--seeds",
        type=parse_seeds,
        default=None,
        help="comma-separated seeds of the sweep and the tables (default: 0,1,2; quick: 0)",
    )
    parser.add_argument(
        "--backbone",
        default=None,
        help="'smollm2', 'tiny' or a Hugging Face model folder (default: smollm2; quick: tiny)",
    )
    parser.add_argument(
        "--sweep-every", type=int, default=None, help="probe every n-th layer (default 1; the final always)"
    )
    parser.add_argument(
        "--lora-epochs",
        type=int,
        default=None,
        help="train MARC with LoRA on the top m layers for this many epochs at the served and the "
        "final layer (default 3; 0 = skipped)",
    )
    parser.add_argument(
        "--dims",
        type=parse_sizes,
        default=None,
        help="comma-separated k values of the compression table (default: 16,64; quick: 8,16)",
    )
    parser.add_argument(
        "--ablations",
        type=_ablations,
        default=None,
        help="comma-separated ablations of MARC to train: recon, no_adapter, no_kl, linear_adapter, or "
        "'none' (default: none, for the time budget; quick: all four)",
    )
    parser.add_argument(
        "--lora-cost-steps",
        type=int,
        default=None,
        help="time this many full-depth LoRA steps at the mid and the final layer (default 2; 0 = skipped)",
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="processes for the downstream jobs (default 2; quick 1)"
    )
    parser.add_argument("--out", type=Path, default=Path("reports/experiments"), help="output folder")
    parser.add_argument(
        "--cache-dir", type=Path, default=Path(".cache/features"), help="cache of pooled backbone states"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="reuse the per-seed results in --out/summary.json of an earlier run with the same result "
        "settings (every job is seeded); only jobs that are new or missing run",
    )
    parser.add_argument(
        "--update-doc",
        type=Path,
        default=None,
        help="also replace the generated block of this markdown file (e.g. EXPERIMENTS.md) with the results",
    )
    parser.set_defaults(handler=run_experiments_command)


def _command(args: argparse.Namespace) -> str:
    """The command line that regenerates this run (the options given, in a fixed order)."""
    parts = ["marc", "experiments"] + (["--quick"] if args.quick else [])
    for flag, value in (
        ("--datasets", ",".join(args.datasets) if args.datasets else None),
        ("--seeds", ",".join(map(str, args.seeds)) if args.seeds else None),
        ("--backbone", args.backbone),
        ("--sweep-every", args.sweep_every),
        ("--lora-epochs", args.lora_epochs),
        ("--dims", ",".join(map(str, args.dims)) if args.dims else None),
        ("--ablations", None if args.ablations is None else ",".join(args.ablations) or "none"),
        ("--lora-cost-steps", args.lora_cost_steps),
        ("--workers", args.workers),
        ("--out", args.out),
        ("--update-doc", args.update_doc),
    ):
        if value is not None:
            parts += [flag, str(value)]
    return shlex.join(parts)


def run_experiments_command(args: argparse.Namespace) -> int:
    from marc.experiments.plan import default_plan, quick_plan
    from marc.experiments.report import update_doc, write_outputs
    from marc.experiments.resume import previous_results
    from marc.experiments.run import run_experiments
    from records.errors import DataError

    overrides: dict[str, Any] = {
        name: value
        for name, value in (
            ("datasets", tuple(args.datasets) if args.datasets else None),
            ("seeds", tuple(args.seeds) if args.seeds else None),
            ("backbone", args.backbone),
            ("sweep_every", args.sweep_every),
            ("lora_epochs", args.lora_epochs),
            ("dims", tuple(args.dims) if args.dims else None),
            ("ablations", args.ablations),
            ("lora_cost_steps", args.lora_cost_steps),
            ("workers", args.workers),
        )
        if value is not None
    }
    if args.seeds:  # the sweep runs on the same seeds
        overrides["sweep_seeds"] = tuple(args.seeds)
    plan = (quick_plan if args.quick else default_plan)(**overrides)
    command = _command(args)
    print(
        f"experiments ({plan.size}): backbone {plan.backbone}, datasets {list(plan.datasets)}, seeds "
        f"{list(plan.seeds)}, k {list(plan.dims)}, {plan.workers} worker(s) -> {args.out}"
    )
    try:
        previous = previous_results(args.out / "summary.json", plan) if args.resume else {}
        if args.resume:
            print(f"resuming: {len(previous)} job results reusable from {args.out / 'summary.json'}")
        summary = run_experiments(
            plan, cache_dir=args.cache_dir, previous=previous, predictions_dir=args.out / "predictions"
        )
    except (DataError, ValueError, FileNotFoundError) as error:
        print(f"marc experiments: error: {error}", file=sys.stderr)
        return 2
    written = write_outputs(summary, args.out, command)
    if args.update_doc is not None:
        try:
            update_doc(args.update_doc, summary, args.out, command)
        except ValueError as error:
            print(f"marc experiments: error: {error}", file=sys.stderr)
            return 2
        print(f"updated the generated block of {args.update_doc}")
    for name, result in summary["datasets"].items():
        print(f"{name}: mid layer L{result['mid_layer']} (by validation cold AUC)")
    choice = summary["layer_choice"]
    print(f"served-layer choice: L{choice['layer']} ({choice['rule']})")
    minutes = summary["timings"]["total_seconds"] / 60
    print(f"done in {minutes:.1f} min; wrote {', '.join(map(str, written.values()))}")
    return 0
