"""`marc serve` and `marc precompute`. Settings come from MARC_* environment variables; flags given on
the command line override them. Heavy imports happen inside the handlers."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from service.cache import cli as cache_cli

log = logging.getLogger(__name__)

# flag -> Settings field, for flags that override MARC_* variables.
SERVE_FLAGS = {
    "artifact": "artifact",
    "host": "host",
    "port": "port",
    "variant": "variant",
    "provider": "provider",
    "redis_url": "redis_url",
    "max_batch_size": "max_batch_size",
    "max_wait_ms": "max_wait_ms",
    "max_queue_items": "max_queue_items",
    "cache_dtype": "cache_dtype",
    "near_cache_bytes": "near_cache_bytes",
    "drain_seconds": "drain_seconds",
    "workers": "workers",
    "log_level": "log_level",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    serve = subparsers.add_parser(
        "serve",
        help="run the embedding service (FastAPI + uvicorn; --workers N processes)",
        description="Serve an artifact over HTTP. Every option also reads its MARC_* environment "
        "variable (e.g. MARC_ARTIFACT, MARC_REDIS_URL); flags win. Without a Redis URL the service "
        "uses an in-process LRU cache. See the README's settings table for all variables.",
    )
    serve.add_argument("--artifact", type=Path, help="artifact directory from `marc export` (MARC_ARTIFACT)")
    serve.add_argument("--host", help="bind address (MARC_HOST, default 127.0.0.1; 0.0.0.0 = all interfaces)")
    serve.add_argument("--port", type=int, help="bind port (MARC_PORT, default 8000)")
    serve.add_argument(
        "--variant",
        choices=["auto", "fp32", "int8", "fp16"],
        help="model variant (MARC_VARIANT; auto = fp16 on CUDA if exported; on CPU int8 with per-row "
        "scales if exported, else fp32)",
    )
    serve.add_argument(
        "--provider", choices=["auto", "cpu", "cuda"], help="execution provider (MARC_PROVIDER, default auto)"
    )
    serve.add_argument("--redis-url", help="redis://, rediss:// or redis+cluster:// URL (MARC_REDIS_URL)")
    serve.add_argument(
        "--cache-dtype",
        choices=["float32", "float16"],
        help="cached value type (MARC_CACHE_DTYPE, default float32; float16 = half the memory)",
    )
    serve.add_argument(
        "--near-cache-bytes",
        type=int,
        help="in-process near-cache in front of Redis, bytes per process (MARC_NEAR_CACHE_BYTES, "
        "64 MiB; 0 = none)",
    )
    serve.add_argument("--max-batch-size", type=int, help="items per ONNX run (MARC_MAX_BATCH_SIZE, 32)")
    serve.add_argument("--max-wait-ms", type=float, help="batch fill wait (MARC_MAX_WAIT_MS, 2)")
    serve.add_argument("--max-queue-items", type=int, help="queue limit before 503 (MARC_MAX_QUEUE_ITEMS)")
    serve.add_argument(
        "--drain-seconds", type=float, help="on SIGTERM, stay up not-ready this long (MARC_DRAIN_SECONDS, 0)"
    )
    serve.add_argument(
        "--workers",
        type=int,
        help="server processes sharing the port, each with its own model (MARC_WORKERS, 1); metrics "
        "are aggregated across them",
    )
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="MARC_LOG_LEVEL")
    serve.set_defaults(handler=run_serve)

    pre = subparsers.add_parser(
        "precompute",
        help="embed an items.jsonl catalogue into Redis and/or a vector file (resumable)",
        description="Offline pre-cache: stream items.jsonl ({item_id, text} per line), embed in "
        "length-sorted batches and write the vectors to Redis under the service's text and id keys "
        "(items already there are skipped, so an interrupted run resumes) and/or to --out. Use the "
        "same --variant and cache prefix as the service, or it will not find the vectors.",
    )
    pre.add_argument("--artifact", type=Path, help="artifact directory (MARC_ARTIFACT)")
    pre.add_argument("--items", type=Path, required=True, help="items.jsonl: one {item_id, text} per line")
    pre.add_argument("--redis-url", help="write to this Redis (MARC_REDIS_URL)")
    pre.add_argument(
        "--out", type=Path, help="also write vectors to a .npy (+ <stem>.ids.jsonl) or .parquet file"
    )
    pre.add_argument("--batch-size", type=int, default=64, help="items per ONNX run (default 64)")
    pre.add_argument(
        "--chunk-items", type=int, default=2048, help="items read, looked up and written per step (2048)"
    )
    pre.add_argument("--variant", choices=["auto", "fp32", "int8", "fp16"], help="MARC_VARIANT")
    pre.add_argument("--provider", choices=["auto", "cpu", "cuda"], help="MARC_PROVIDER")
    pre.add_argument("--cache-prefix", help="key prefix (MARC_CACHE_PREFIX, default marc)")
    pre.add_argument(
        "--ttl-seconds", type=int, help="expiry of written keys, 0 = never (MARC_CACHE_TTL_SECONDS)"
    )
    pre.add_argument(
        "--cache-dtype",
        choices=["float32", "float16"],
        help="value type in Redis; must match the service's (MARC_CACHE_DTYPE, default float32)",
    )
    pre.set_defaults(handler=run_precompute)
    cache_cli.register(subparsers)


def _settings(args: argparse.Namespace, flags: dict[str, str]) -> Any:
    from service.settings import Settings

    overrides = {
        field: getattr(args, flag) for flag, field in flags.items() if getattr(args, flag, None) is not None
    }
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}" for error in exc.errors()
        )
        raise SystemExit(f"invalid settings ({problems}); set MARC_* variables or pass the flags") from None


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from artifact.names import ArtifactError
    from service.app import create_app
    from service.lifecycle import DrainingServer, Lifecycle
    from service.runtime import load_service_encoder

    settings = _settings(args, SERVE_FLAGS)
    logging.getLogger().setLevel(settings.log_level.upper())
    try:
        # Before the server starts: a bad artifact is one clear line and exit code 2, not a traceback.
        encoder = load_service_encoder(settings)
    except ArtifactError as exc:
        print(f"marc serve: refusing to start: {exc}", file=sys.stderr)
        return 2
    if settings.workers > 1:
        from service.workers import serve_workers

        del encoder  # verified; each worker loads its own
        return serve_workers(
            settings.model_dump(), host=settings.host, port=settings.port, workers=settings.workers
        )
    lifecycle = Lifecycle()
    config = uvicorn.Config(
        create_app(settings, lifecycle, encoder),
        host=settings.host,
        port=settings.port,
        workers=1,  # this process serves; --workers N runs N of them (service.workers)
        log_level=settings.log_level,
        access_log=settings.log_level == "debug",  # per-request lines cost throughput; metrics cover it
        timeout_graceful_shutdown=30,
    )
    DrainingServer(config, lifecycle, settings.drain_seconds).run()
    return 0


def run_precompute(args: argparse.Namespace) -> int:
    from artifact.names import ArtifactError
    from records.errors import DataError
    from service.cache.keys import KeySpace
    from service.cache.stores import CacheUnavailable, RedisCache
    from service.cache.values import ValueCodec
    from service.model.encoder import load_encoder
    from service.precompute import count_lines, iter_items, precompute
    from service.vector_files import open_vector_writer

    flags = {
        "artifact": "artifact",
        "redis_url": "redis_url",
        "variant": "variant",
        "provider": "provider",
        "cache_prefix": "cache_prefix",
        "ttl_seconds": "cache_ttl_seconds",
        "cache_dtype": "cache_dtype",
    }
    settings = _settings(args, flags)
    if not settings.redis_url and args.out is None:
        raise SystemExit("nothing to write: give --redis-url (or MARC_REDIS_URL) and/or --out")
    if not args.items.is_file():
        raise SystemExit(f"{args.items}: items file not found")
    try:
        encoder = load_encoder(
            settings.artifact,
            variant=settings.variant,
            provider=settings.provider,
            intra_threads=settings.ort_intra_threads,
            inter_threads=settings.ort_inter_threads,
        )
        writer = open_vector_writer(args.out, encoder.dim) if args.out else None
    except (ArtifactError, ValueError) as exc:
        raise SystemExit(str(exc)) from None
    keys = KeySpace(settings.cache_prefix, encoder.artifact.fingerprint, settings.cache_dtype)
    codec = ValueCodec(settings.cache_dtype, encoder.dim)

    async def run() -> Any:
        redis = None
        if settings.redis_url:
            # A batch job waits longer per call than the service, and fails loudly instead of skipping.
            redis = RedisCache(
                settings.redis_url,
                ttl_seconds=settings.cache_ttl_seconds,
                timeout_seconds=30.0,
                retry_seconds=0.001,
                cluster=settings.redis_cluster,
            )
        try:
            return await precompute(
                encoder,
                iter_items(args.items),
                keys=keys,
                codec=codec,
                redis=redis,
                writer=writer,
                batch_size=args.batch_size,
                chunk_items=max(args.chunk_items, args.batch_size),
                total=count_lines(args.items),
            )
        finally:
            if redis is not None:
                await redis.close()

    try:
        report = asyncio.run(run())
    except CacheUnavailable as exc:
        raise SystemExit(f"redis {settings.redis_url}: {exc} (re-run to resume)") from None
    except DataError as exc:
        raise SystemExit(str(exc)) from None
    written = writer.close() if writer else []
    print(
        f"{report.items} items in {report.seconds:.1f} s: {report.computed} computed, "
        f"{report.reused} already in Redis; model {encoder.artifact.name} fingerprint "
        f"{encoder.artifact.fingerprint[:16]}"
        + (f"; wrote {', '.join(str(p) for p in written)}" if written else "")
    )
    return 0
