"""`marc experiments-nested`: the nested-dimensions study (`marc.nested_study`) writing
reports/experiments-nested/ and, with --update-doc, its block in EXPERIMENTS.md."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from marc.commands.arguments import HelpFormatter, parse_dataset_specs, parse_seeds, parse_sizes

DESCRIPTION = """\
Nested (Matryoshka) dimensions: for each dataset, one MARC C trained with --dims nested, one C
trained separately at each d, and PCA of the pooled states to each d, all scored by the downstream
CTR model on the same test rows; nested vs separate and nested vs PCA compared per d with paired item
bootstrap CIs (cold items). Reports the price of nesting at full k. Writes summary.json, results.md
and one plot per dataset to --out. --quick: tiny backbone and data, for CI (well under a minute).
"""


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
        type=parse_dataset_specs,
        default=None,
        help="comma-separated dataset specs (default: synthetic,movielens100k:data/ml-100k; "
        "quick: synthetic)",
    )
    parser.add_argument(
        "--dims", type=parse_sizes, default=None, help="nested sizes (default 8,16,32,64; quick 4,8,16)"
    )
    parser.add_argument("--backbone", default=None, help="default: smollm2; quick: tiny")
    parser.add_argument(
        "--layer", type=int, default=None, help="cut layer (default 21, the served layer; quick 2)"
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="maximum MARC epochs (default 15, patience 3, as marc experiments)",
    )
    parser.add_argument(
        "--seeds",
        type=parse_seeds,
        default=None,
        help="comma-separated seeds of MARC and the downstream model (default 0,1,2; quick 0,1)",
    )
    parser.add_argument("--workers", type=int, default=None, help="processes (default 2; quick 1)")
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
        datasets=tuple(args.datasets) if args.datasets else None,
        dims=tuple(args.dims) if args.dims else None,
        backbone=args.backbone,
        layer=args.layer,
        epochs=args.epochs,
        seeds=tuple(args.seeds) if args.seeds else None,
        workers=args.workers,
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
