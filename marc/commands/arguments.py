"""What several `marc` commands share: the help format, seed, size and dataset-spec lists, and the
dataset options and loading of evaluate and probe (and the dataset loading of train)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except the None ones (their help says what None means)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def parse_sizes(text: str) -> list[int]:
    """Ascending distinct vector sizes >= 1, e.g. nested prefixes ``8,16,32,64``."""
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated integers, got {text!r}") from None
    if not sizes or sizes != sorted(set(sizes)) or sizes[0] < 1:
        raise argparse.ArgumentTypeError(f"must be ascending distinct sizes >= 1, got {text!r}")
    return sizes


def parse_dataset_specs(text: str) -> list[str]:
    """Comma-separated dataset specs (at least one)."""
    specs = [part.strip() for part in text.split(",") if part.strip()]
    if not specs:
        raise argparse.ArgumentTypeError("--datasets needs at least one dataset spec")
    return specs


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds must be comma-separated integers, got {text!r}") from None
    if not seeds:
        raise argparse.ArgumentTypeError("give at least one seed")
    return seeds


def add_data_arguments(parser: argparse.ArgumentParser, default_data: str | None) -> None:
    """--data, --data-seed, --items, --users, --seeds, --cache-dir (shared with `marc probe`)."""
    group = parser.add_argument_group("data and seeds")
    group.add_argument(
        "--data",
        default=default_data,
        help="dataset: 'synthetic', 'entities', 'movielens:<dir>' or 'jsonl:<dir>'"
        + ("" if default_data else " (default: the dataset the checkpoint was trained on)"),
    )
    group.add_argument(
        "--data-seed", type=int, default=0, help="seed of the dataset generator / random split"
    )
    group.add_argument(
        "--items", type=int, default=None, help="generated items (synthetic/entities; default 2000)"
    )
    group.add_argument(
        "--users", type=int, default=None, help="generated users (synthetic/entities; default 1000)"
    )
    group.add_argument(
        "--seeds",
        type=parse_seeds,
        default=[0],
        help="comma-separated seeds of the downstream model (and of trained baselines); "
        "metrics are the mean, with the std over seeds",
    )
    group.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(".cache/features"),
        help="where pooled backbone states are cached (one .npy per layer)",
    )


def load_data(args: argparse.Namespace) -> Any:
    from marc.data import load_dataset

    sizes = {k: v for k, v in (("num_items", args.items), ("num_users", args.users)) if v is not None}
    return load_dataset(args.data, seed=args.data_seed, **sizes)
