"""The cold path's levers side by side: `marc serve` under several settings, each driven by the same
closed loop of single-item clients with fresh texts, against raw ONNX Runtime in the same round.

    python -m loadtest.levers --artifact artifacts/default [--rounds 3] [--duration 10]
        [--setting NAME:MARC_KEY=VALUE,MARC_KEY=VALUE ...] [--markdown FILE]

Every setting runs as its own server (started once, all on one private redis-server); each round
measures the limits (raw ORT at the batch size given, one run at a time over ORT's default threads,
and two runs side by side on half the CPUs each: `loadtest.raw_ort.ColdLimit`), then each server
in turn, so the machine's drift hits every setting alike. The table gives each setting's items/s
per round and its median ratio to the same round's best limit. Settings are the service's
environment variables (docs/settings.md); the defaults compare the service's defaults with
one runner (the earlier default), one runner with pipelined windows, and two runners with smaller
windows.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from artifact.manifest import read_manifest
from artifact.names import ArtifactError
from loadtest.bench import COLD_START, RAW_TEXTS_START, TEXTS_PER_ROUND
from loadtest.loadgen import Workload
from loadtest.phases import closed_loop
from loadtest.processes import RedisServer, marc_serve
from loadtest.raw_ort import ColdLimit
from loadtest.texts import TEXT_LENGTHS, TextLength, item_texts
from service.model.encoder import cpu_variant

log = logging.getLogger("marc.levers")

DEFAULT_SETTINGS = {
    "default (2 runners x 1/2 of the CPUs, batch 16, 3 windows)": {},
    "1 runner, batch 32, 1 window (the earlier default)": {
        "MARC_MODEL_RUNNERS": "1",
        "MARC_MAX_BATCH_SIZE": "32",
        "MARC_PIPELINE_WINDOWS": "1",
    },
    "1 runner, batch 32, 2 windows": {
        "MARC_MODEL_RUNNERS": "1",
        "MARC_MAX_BATCH_SIZE": "32",
        "MARC_PIPELINE_WINDOWS": "2",
    },
    "2 runners, batch 8": {"MARC_MAX_BATCH_SIZE": "8"},
}


@dataclass(frozen=True)
class Limit:
    name: str
    items_per_second: float


def raw_limits(cold_limit: ColdLimit, texts: list[str], batch: int, seconds: float) -> list[Limit]:
    one, two = cold_limit.measure(texts, batch, seconds)
    return [
        Limit(f"raw ORT, batch {batch}, 1 run", one.items_per_second),
        Limit(f"raw ORT, batch {batch}, 2 single-thread runs", two.items_per_second),
    ]


def _parse_setting(text: str) -> tuple[str, dict[str, str]]:
    """``NAME:MARC_KEY=VALUE,...`` (nothing after the colon = the defaults)."""
    name, _, pairs = text.partition(":")
    env = dict(pair.partition("=")[::2] for pair in pairs.split(",") if pair)
    if not name or not all(key.startswith("MARC_") and value for key, value in env.items()):
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME:MARC_KEY=VALUE[,MARC_KEY=VALUE...]")
    return name, env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.levers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", type=Path, default=Path("artifacts/default"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per phase (%(default)s)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16, help="raw ORT's batch size (%(default)s)")
    parser.add_argument("--length", choices=TEXT_LENGTHS, default="long", help="cold texts (%(default)s)")
    parser.add_argument(
        "--setting",
        action="append",
        type=_parse_setting,
        help="NAME:MARC_KEY=VALUE,... (repeatable; default: " + "; ".join(DEFAULT_SETTINGS) + ")",
    )
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    settings = dict(args.setting) if args.setting else DEFAULT_SETTINGS
    length: TextLength = args.length
    try:
        variant = cpu_variant(read_manifest(args.artifact))
    except ArtifactError as exc:
        parser.error(str(exc))
    texts = item_texts(RAW_TEXTS_START, 512, length)
    cold_limit = ColdLimit.open(args.artifact, variant)
    limits: list[list[Limit]] = []
    measured: dict[str, list[float]] = {name: [] for name in settings}
    with tempfile.TemporaryDirectory() as scratch, RedisServer() as redis, ExitStack() as servers:
        started = {}
        for index, (name, env) in enumerate(settings.items()):
            server = marc_serve(
                name, args.artifact, redis.url, Path(scratch) / f"serve-{index}.log", settings=env
            )
            started[name] = servers.enter_context(server)
        for number in range(args.rounds):
            limits.append(raw_limits(cold_limit, texts, args.batch, args.duration / 2))
            log.info("round %d: %s", number + 1, [(x.name, round(x.items_per_second, 1)) for x in limits[-1]])
            for index, (name, server) in enumerate(started.items()):
                start = COLD_START + (number * len(settings) + index) * TEXTS_PER_ROUND
                workload = Workload(kind="unique", start=start, text_length=length)
                result = closed_loop(
                    server,
                    workload,
                    seconds=args.duration,
                    concurrency=args.concurrency,
                    warmup=args.concurrency,
                )
                measured[name].append(result.items_per_second)
                log.info("  %s: %.1f items/s", name, measured[name][-1])
    table = _table(settings, measured, limits, variant, length, args)
    print(table)
    if args.markdown:
        args.markdown.write_text(table)
    return 0


def _table(
    settings: dict[str, dict[str, str]],
    measured: dict[str, list[float]],
    limits: list[list[Limit]],
    variant: str,
    length: str,
    args: argparse.Namespace,
) -> str:
    best = [max(x.items_per_second for x in each) for each in limits]
    lines = [
        f"Cold path, {variant}, {length} texts, {args.concurrency} single-item clients, "
        f"{args.rounds} rounds x {args.duration:g} s (items/s per round; ratio = median over rounds of "
        "items/s / the round's best raw limit)",
        "",
        "| setting | environment | items/s per round | ratio to raw |",
        "| --- | --- | --- | ---: |",
    ]
    for name, values in measured.items():
        env = ", ".join(f"`{k}={v}`" for k, v in settings[name].items()) or "(defaults)"
        ratio = statistics.median(v / b for v, b in zip(values, best, strict=True))
        lines.append(f"| {name} | {env} | {' / '.join(f'{v:.1f}' for v in values)} | {ratio:.3f} |")
    for position, limit in enumerate(limits[0]):
        values = [each[position].items_per_second for each in limits]
        ratio = statistics.median(v / b for v, b in zip(values, best, strict=True))
        lines.append(f"| {limit.name} | - | {' / '.join(f'{v:.1f}' for v in values)} | {ratio:.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
