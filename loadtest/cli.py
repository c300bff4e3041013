"""`marc bench` (also `python -m loadtest.cli`): the headless benchmark of `loadtest.bench`."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

DESCRIPTION = """\
Benchmark the service against its limits in one run, on 127.0.0.1 only: starts a private
redis-server, `marc serve` on the artifact and two reference servers (a naive one-run-per-request
server and a bare FastAPI endpoint), drives them with a load generator in a separate process, measures
ONNX Runtime directly, stops everything, and prints one markdown table (and writes JSON). Rows: cold
path vs raw ORT (and the naive server), hot path vs the bare endpoint (+ p99 at half peak), truncation
L vs full depth, int8 vs fp32, Redis bytes per cached item and artifact size; the hot path also on
/v1/embeddings and with `marc serve --workers N`. The truncation row exports the checkpoint at full
depth once (cached in --cache-dir). With --peer infinity, the same load phases run against Infinity
serving the same truncated backbone (each CPU engine, then its vector cache) from its own virtualenv
(--peer-venv; --install-peer makes it).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--artifact", type=Path, default=Path("artifacts/default"), help="artifact directory (%(default)s)"
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        help="checkpoint the artifact was exported from, for the truncation row (default: the one the "
        "manifest records)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny loads and sweeps (smoke test, ~30 s)")
    parser.add_argument("--duration", type=float, help="seconds per load phase (10; --quick: 1.5)")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent clients (%(default)s)")
    parser.add_argument("--hot-items", type=int, default=1, help="items per hot-path request (%(default)s)")
    parser.add_argument(
        "--rounds", type=int, help="rounds; each throughput is the best round's (2; --quick: 1)"
    )
    parser.add_argument(
        "--cache-dir", type=Path, default=Path(".cache/bench"), help="full-depth export cache (%(default)s)"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("reports/bench.json"), help="JSON report (%(default)s)"
    )
    parser.add_argument("--markdown", type=Path, help="also write the markdown table to this file")
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="hot path also with marc serve --workers N (%(default)s; 1 = no)",
    )
    parser.add_argument("--peer", choices=["infinity"], help="also benchmark this peer server (rows 6)")
    parser.add_argument(
        "--peer-venv",
        type=Path,
        default=Path(".cache/peer-infinity"),
        help="the peer's own virtualenv (%(default)s); never the project's",
    )
    parser.add_argument(
        "--install-peer", action="store_true", help="create --peer-venv and install the peer when missing"
    )
    parser.add_argument(
        "--request-texts",
        type=int,
        default=32,
        help="texts per request in the peer's batch phase (%(default)s)",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="benchmark the service against raw ONNX Runtime and a bare endpoint (headless)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    parser.set_defaults(handler=run_bench)
    register_encodings(subparsers)


ENCODINGS_DESCRIPTION = """\
Wire encodings on a catalogue: embeds --items catalogue texts with the artifact's served variant
(what MARC_VARIANT=auto picks on CPU, or --variant), then for every encoding (float, base64, float16,
int8, binary) and every size the artifact serves (its nested prefixes, or k): bytes per vector on
the wire, cosine of the decoded vector to float32 (mean, min) and recall@10 of nearest neighbours
against float32. Prints a markdown table; writes JSON to --out and the table next to it (.md).
"""


def register_encodings(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench-encodings",
        help="bytes, cosine and recall@10 of each wire encoding on a catalogue",
        description=ENCODINGS_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--artifact", type=Path, default=Path("artifacts/default"), help="artifact directory (%(default)s)"
    )
    parser.add_argument("--items", type=int, default=2000, help="catalogue size (%(default)s)")
    parser.add_argument(
        "--variant", choices=["fp32", "int8", "fp16"], help="default: what auto serves on CPU"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("reports/bench-encodings.json"), help="JSON report (%(default)s)"
    )
    parser.set_defaults(handler=run_bench_encodings)


def run_bench_encodings(args: argparse.Namespace) -> int:
    from artifact.names import ArtifactError
    from loadtest.encodings_bench import run, write

    if args.items < NEIGHBOURS_PLUS_ONE:
        raise SystemExit(f"--items must be at least {NEIGHBOURS_PLUS_ONE} (10 neighbours per item)")
    try:
        report = run(args.artifact, args.items, args.variant)
    except (ArtifactError, FileNotFoundError) as exc:
        print(f"marc bench-encodings: {exc}", file=sys.stderr)
        return 1
    command = f"marc bench-encodings --artifact {args.artifact} --items {args.items}"
    command += f" --variant {args.variant}" if args.variant else ""
    sys.stdout.write(write(report, args.out, command))
    return 0


NEIGHBOURS_PLUS_ONE = 11


def build_standalone_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.cli",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    return parser


def run_bench(args: argparse.Namespace) -> int:
    from artifact.names import ArtifactError
    from loadtest.bench import BenchOptions, run_benchmark
    from loadtest.bench_report import write_report

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per readiness poll otherwise
    if args.concurrency < 1 or args.hot_items < 1 or args.workers < 1 or args.request_texts < 1:
        raise SystemExit("--concurrency, --hot-items, --workers and --request-texts must be >= 1")
    options = BenchOptions(
        artifact=args.artifact,
        checkpoint=args.checkpoint,
        quick=args.quick,
        duration=args.duration or (1.5 if args.quick else 10.0),
        concurrency=args.concurrency,
        hot_items=args.hot_items,
        rounds=args.rounds or (1 if args.quick else 2),
        cache_dir=args.cache_dir,
        workers=args.workers,
        peer=args.peer,
        peer_venv=args.peer_venv,
        install_peer=args.install_peer,
        request_texts=args.request_texts,
    )
    try:
        report = run_benchmark(options)
    except (ArtifactError, FileNotFoundError, ValueError) as exc:
        print(f"marc bench: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(write_report(report, args.out, args.markdown))
    print(f"JSON report: {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_bench(build_standalone_parser().parse_args()))
