"""`marc data`: generate synthetic datasets to disk and inspect any dataset spec."""

from __future__ import annotations

import argparse
import sys

from marc.data import DATASET_SPECS, RecDataset


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser(
        "data",
        help="generate and inspect datasets",
        description="Generate synthetic datasets and inspect datasets. Dataset specs: " + DATASET_SPECS + ".",
    )
    commands = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    synth = commands.add_parser(
        "synth",
        help="write a generated dataset as JSON lines",
        description="Generate a dataset and write items.jsonl, interactions.jsonl (with a split column), "
        "meta.json and meta_arrays.npz to --out. Reload it with the spec 'jsonl:<out>' (same split).",
    )
    synth.add_argument(
        "--out", required=True, help="output directory (created if missing; existing files are overwritten)"
    )
    synth.add_argument(
        "--kind",
        choices=["synthetic", "entities"],
        default="synthetic",
        help="'synthetic': product descriptions built from categories, brands, attributes and price; "
        "'entities': items named only by a famous entity, clicks depend on its unstated category "
        "(default: %(default)s)",
    )
    synth.add_argument(
        "--items",
        type=int,
        default=None,
        help="number of items (default: 2000 for synthetic, the whole 300-entity table for entities)",
    )
    synth.add_argument("--users", type=int, default=1000, help="number of users (default: %(default)s)")
    synth.add_argument(
        "--interactions-per-user",
        type=int,
        default=40,
        help="items shown to each user, clicked or not (default: %(default)s)",
    )
    synth.add_argument(
        "--cold-fraction",
        type=float,
        default=0.2,
        help="fraction of items held out of train; their interactions go to valid/test "
        "(default: %(default)s)",
    )
    synth.add_argument(
        "--seed",
        type=int,
        default=0,
        help="random seed; the same seed gives the same dataset (default: %(default)s)",
    )
    synth.set_defaults(handler=_synth)

    show = commands.add_parser(
        "show",
        help="print sizes, positive rate, cold items and example texts of a dataset",
        description="Load a dataset spec and summarise it.",
    )
    show.add_argument("spec", help="dataset spec: " + DATASET_SPECS)
    show.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed for generated datasets and random splits (default: %(default)s)",
    )
    show.set_defaults(handler=_show)


def _synth(args: argparse.Namespace) -> int:
    from marc.data import make_entities, make_synthetic, save_dataset

    common = {
        "num_users": args.users,
        "interactions_per_user": args.interactions_per_user,
        "cold_fraction": args.cold_fraction,
        "seed": args.seed,
    }
    if args.kind == "synthetic":
        dataset = make_synthetic(num_items=args.items or 2000, **common)
    else:
        dataset = make_entities(num_items=args.items, **common)
    out = save_dataset(dataset, args.out)
    print(f"wrote {dataset.name} dataset to {out} (reload it with the dataset spec jsonl:{out})")
    _print_summary(dataset)
    return 0


def _show(args: argparse.Namespace) -> int:
    from marc.data import load_dataset
    from records.errors import DataError

    try:
        dataset = load_dataset(args.spec, seed=args.seed)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    _print_summary(dataset)
    return 0


def _print_summary(dataset: RecDataset) -> None:
    print(f"dataset: {dataset.name}")
    print(
        f"users: {dataset.num_users}  items: {dataset.num_items}  cold items: {int(dataset.cold_items.sum())}"
    )
    for name in ("train", "valid", "test"):
        split = getattr(dataset, name)
        rate = float(split.labels.mean()) if len(split) else float("nan")
        cold_rows = len(dataset.cold(split))
        print(f"{name:>5}: {len(split):>8} interactions  positive rate {rate:.3f}  on cold items {cold_rows}")
    print("examples:")
    for text in dataset.item_texts[:3]:
        print(f"  {text}")
