"""The `marc` package's commands (data, train, evaluate, probe, experiments, experiments-nested), one
module each in `marc.commands`; `marc_serve.cli` assembles them with the other packages' commands."""

from __future__ import annotations

import argparse

from marc.commands import data, evaluate, experiments, experiments_nested, probe, train


def register(subparsers: argparse._SubParsersAction) -> None:
    for commands in (data, train, evaluate, probe, experiments, experiments_nested):
        commands.register(subparsers)
