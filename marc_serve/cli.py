"""`marc` console command. Each package exposes its subcommands as ``register(subparsers)`` in its own
``cli`` module; this module only assembles them. Handlers import heavy libraries (torch, transformers,
onnxruntime) only when they run, so `marc --help` and the serving commands start fast."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Sequence

import export.cli
import loadtest.cli
import marc.cli
import service.cli
from marc.determinism import pin_cpu_kernels

# Each package's commands, in the order `marc --help` lists them.
COMMAND_GROUPS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    marc.cli.register,
    export.cli.register,
    service.cli.register,
    loadtest.cli.register,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="marc",
        description="MARC embeddings for recommender systems: data, training, evaluation, export, serving.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in COMMAND_GROUPS:
        register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # Before any command imports torch: the same build gives the same bits on every machine.
    pin_cpu_kernels()
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Each register() sets `handler` via set_defaults; it returns an exit code (None = 0).
    return int(args.handler(args) or 0)
