"""`marc experiments-nested`: the nested-dimensions study (`marc.nested_study`) writing
reports/experiments-nested/ and, with --update-doc, its block in EXPERIMENTS.md."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from marc.commands.arguments import HelpFormatter

DESCRIPTION = """\
Nested (Matryoshka) dimensions: for each dataset, one MARC C trained with --dims nested, one C
trained separately at each d, and PCA of the pooled states to each d, all scored by the downstream
CTR model on the same test rows; nested vs separate and nested vs PCA compared per d with paired item
bootstrap CIs (cold items). Reports the price of nesting at full k. Writes summary.json, results.md
and one plot per dataset to --out. --quick: tiny backbone and data, for CI (well under a minute).
"""


def _dims(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--dims must be comma-separated integers, got {text!r}") from None
    if not dims or list(dims) != sorted(set(dims)) or dims[0] < 1:
        raise argparse.ArgumentTypeError(f"--dims must be ascending distinct sizes >= 1, got {text!r}")
    return dims


def _datasets(text: str) -> tuple[str, ...]:
    specs = tuple(part.strip() for part in text.split(",") if part.strip())
    if not specs:
        raise argparse.ArgumentTypeError("--datasets needs at least one dataset spec")
    return specs


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "experiments-nested",
        help="nested dimensions: each prefix vs a C trained at its size vs PCA -> reports/experiments-nested",
        description=DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="CI size: tiny backbone and data")
    parser.add_argument(
        "--datasets",
        type=_datasets,
        default=None,
        help="comma-separated dataset specs (default: synthetic,movielens100k:data/ml-100k; "
        "quick: synthetic)",
    )
    parser.add_argument(
        "--dims", type=_dims, default=None, help="nested sizes (default 8,16,32,64; quick 4,8,16)"
    )
    parser.add_argument("--backbone", default=None, help="default: smollm2; quick: tiny")
    parser.add_argument(
        "--layer", type=int, default=None, help="cut layer (default 8, the served one; quick 2)"
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="maximum MARC epochs (default 15, patience 3, as marc experiments)",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed of training, evaluation, bootstrap (0)")
    parser.add_argument("--resamples", type=int, default=None, help="bootstrap resamples (default 1000)")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(".cache/features"),
        help="where pooled backbone states are cached",
    )
    parser.add_argument("--out", type=Path, default=Path("reports/experiments-nested"), help="output folder")
    parser.add_argument(
        "--update-doc",
        type=Path,
        default=None,
        help="fill the generated nested-dimensions block of this file (EXPERIMENTS.md)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from marc.nested_study import NestedPlan, quick_plan, run_study, update_doc, with_overrides, write_outputs
    from records.errors import DataError

    plan = quick_plan() if args.quick else NestedPlan()
    plan = with_overrides(
        plan,
        datasets=args.datasets,
        dims=args.dims,
        backbone=args.backbone,
        layer=args.layer,
        epochs=args.epochs,
        seed=args.seed,
        resamples=args.resamples,
    )
    command = (
        "marc " + shlex.join(sys.argv[1:])
        if sys.argv[1:2] == ["experiments-nested"]
        else "marc experiments-nested"
    )
    try:
        summary = run_study(plan, args.out, args.cache_dir)
    except (DataError, ValueError, FileNotFoundError) as error:
        print(f"marc experiments-nested: error: {error}", file=sys.stderr)
        return 2
    written = write_outputs(summary, args.out, command)
    if args.update_doc is not None:
        update_doc(args.update_doc, summary, args.out, command)
    print((args.out / "results.md").read_text())
    print("wrote " + ", ".join(str(path) for path in written.values()))
    return 0
