"""`marc` console command. Each subcommand lives in its own module exposing
``register(subparsers)``; modules import heavy libraries (torch, transformers, onnxruntime) only
inside their handlers, so `marc --help` and the serving commands start fast."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from marc.determinism import pin_cpu_kernels

# One module per subcommand group, in the order `marc --help` lists them.
SUBCOMMAND_MODULES: tuple[str, ...] = (
    "marc.commands.data",
    "marc.commands.train",
    "marc.commands.evaluate",
    "marc.commands.probe",
    "marc.commands.experiments",
    "export.cli",
    "service.cli",
    "loadtest.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="marc",
        description="MARC embeddings for recommender systems: data, training, evaluation, export, serving.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
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


if __name__ == "__main__":
    sys.exit(main())
