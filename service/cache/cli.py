"""`marc cache stats` and `marc cache purge`: Redis housekeeping (see `service.cache.admin`). The Redis
URL, cluster flag and key prefix default to the service's MARC_* variables, so an operator runs them
with the environment the replicas use."""

from __future__ import annotations

import argparse
import json
import time
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

if TYPE_CHECKING:
    from service.cache.admin import CacheTarget


def register(subparsers: argparse._SubParsersAction) -> None:
    cache = subparsers.add_parser(
        "cache",
        help="Redis cache housekeeping: usage per model fingerprint, purge an old fingerprint",
        description="Walks the cache with SCAN (never KEYS) in small pages, so it is safe on a live "
        "server and on a Redis Cluster (every primary is scanned).",
    )
    commands = cache.add_subparsers(dest="cache_command", metavar="COMMAND", required=True)
    stats = commands.add_parser("stats", help="keys and bytes per fingerprint and value type")
    stats.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    purge = commands.add_parser(
        "purge",
        help="UNLINK every key of one fingerprint (after no replica serves it any more)",
        description="Removes the text and id vectors of one model fingerprint (both value types), "
        "in batches. Purging a fingerprint that is still served only empties its cache: the service "
        "recomputes and stores vectors again.",
    )
    purge.add_argument(
        "--fingerprint", required=True, help="the model fingerprint, or its first 16 hex characters"
    )
    for command in (stats, purge):
        command.add_argument("--redis-url", help="redis://, rediss:// or redis+cluster:// (MARC_REDIS_URL)")
        command.add_argument(
            "--cluster",
            action="store_true",
            default=None,
            help="the URL is a Redis Cluster node (MARC_REDIS_CLUSTER)",
        )
        command.add_argument("--cache-prefix", help="key prefix (MARC_CACHE_PREFIX, default marc)")
        command.add_argument(
            "--page-keys", type=int, default=1000, help="keys per SCAN page and per UNLINK (1000)"
        )
    stats.set_defaults(handler=run_stats)
    purge.set_defaults(handler=run_purge)


def _target(args: argparse.Namespace) -> CacheTarget:
    from service.cache.admin import CacheTarget

    flags = {"redis_url": args.redis_url, "redis_cluster": args.cluster, "cache_prefix": args.cache_prefix}
    try:
        target = CacheTarget(**{name: value for name, value in flags.items() if value is not None})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise SystemExit(f"marc cache: invalid settings ({problems})") from None
    if not target.redis_url:
        raise SystemExit("marc cache: no Redis: give --redis-url or set MARC_REDIS_URL")
    if args.page_keys < 1:
        raise SystemExit(f"marc cache: --page-keys must be >= 1, got {args.page_keys}")
    return target


def _client(target: CacheTarget) -> Any:
    from service.cache.admin import connect

    return connect(target.redis_url, cluster=target.redis_cluster)


def _megabytes(count: int) -> str:
    return f"{count / 1e6:.2f} MB"


def run_stats(args: argparse.Namespace) -> int:
    from redis.exceptions import RedisError

    from service.cache.admin import cache_usage

    target = _target(args)
    started = time.perf_counter()
    try:
        client = _client(target)
        usage = cache_usage(client, target.cache_prefix, page_keys=args.page_keys)
        client.close()
    except RedisError as exc:
        raise SystemExit(f"marc cache stats: redis {target.redis_url}: {exc}") from None
    if args.json:
        print(json.dumps(usage.to_dict()))
        return 0
    print(f"{'fingerprint':<18}{'values':<18}{'texts':>10}{'ids':>10}{'keys':>10}{'bytes':>13}")
    for row in usage.fingerprints:
        print(
            f"{row.fingerprint:<18}{row.value_dtype:<18}{row.texts:>10}{row.ids:>10}{row.keys:>10}"
            f"{_megabytes(row.bytes):>13}"
        )
    total_keys = sum(row.keys for row in usage.fingerprints)
    print(
        f"{total_keys} vector keys, {_megabytes(sum(row.bytes for row in usage.fingerprints))} under "
        f"'{usage.prefix}:' on {usage.nodes} node(s); {usage.other_keys} other keys "
        f"({_megabytes(usage.other_bytes)}); scanned in {time.perf_counter() - started:.1f} s"
    )
    return 0


def run_purge(args: argparse.Namespace) -> int:
    from redis.exceptions import RedisError
    from tqdm.auto import tqdm

    from service.cache.admin import fingerprint_key_prefix, purge_fingerprint

    target = _target(args)
    try:
        fingerprint = fingerprint_key_prefix(args.fingerprint)
    except ValueError as exc:
        raise SystemExit(f"marc cache purge: --{exc}") from None
    started = time.perf_counter()
    try:
        client = _client(target)
        with tqdm(desc=f"unlinking {fingerprint}", unit="key") as bar:
            removed = purge_fingerprint(
                client, target.cache_prefix, fingerprint, page_keys=args.page_keys, progress=bar.update
            )
        client.close()
    except RedisError as exc:
        raise SystemExit(f"marc cache purge: redis {target.redis_url}: {exc} (re-run to finish)") from None
    print(
        f"removed {removed} keys of fingerprint {fingerprint} under '{target.cache_prefix}:' "
        f"in {time.perf_counter() - started:.1f} s"
    )
    return 0
