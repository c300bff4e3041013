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

# `marc precompute` exit codes: one meaning each, so a Job controller or a script can tell what to do.
PRECOMPUTE_DONE = 0  # every item of the shard is stored (computed now or already cached)
PRECOMPUTE_USAGE = 2  # bad flags or settings (a shard spec like 3/2), nothing done; argparse's own code
PRECOMPUTE_CATALOGUE = 3  # the items file is missing or has a bad line: nothing computed; fix the file
PRECOMPUTE_ARTIFACT = 4  # the artifact cannot be loaded or verified: nothing computed
PRECOMPUTE_REDIS = 5  # Redis unreachable or failing: stopped; items stored so far stay, a re-run resumes
PRECOMPUTE_PARTIAL = 6  # the model failed on some chunks: the rest is stored; a re-run retries the failed
PRECOMPUTE_EXIT_CODES = f"""exit codes:
  {PRECOMPUTE_DONE}  done: every item of the shard is in Redis (and the file)
  {PRECOMPUTE_USAGE}  bad command line or settings (e.g. --shard 3/2): nothing done
  {PRECOMPUTE_CATALOGUE}  catalogue error: --items missing or a bad line (named): nothing computed
  {PRECOMPUTE_ARTIFACT}  the artifact cannot be loaded or verified: nothing computed
  {PRECOMPUTE_REDIS}  Redis unreachable or failing: stopped, what was stored stays; re-run to resume
  {PRECOMPUTE_PARTIAL}  partial: the model failed on some items (logged); re-run to retry only those"""


def register(subparsers: argparse._SubParsersAction) -> None:
    serve = subparsers.add_parser(
        "serve",
        help="run the embedding service (FastAPI + uvicorn; --workers N processes)",
        description="Serve an artifact over HTTP. Every option also reads its MARC_* environment "
        "variable (e.g. MARC_ARTIFACT, MARC_REDIS_URL); flags win. Without a Redis URL the service "
        "uses an in-process LRU cache. All variables: docs/settings.md.",
    )
    serve.add_argument("--artifact", type=Path, help="artifact directory from `marc export` (MARC_ARTIFACT)")
    serve.add_argument(
        "--artifacts",
        help="several models: name=DIR,name=DIR or a directory of artifacts (MARC_ARTIFACTS)",
    )
    serve.add_argument("--default-model", help="model of requests that name none (MARC_DEFAULT_MODEL)")
    serve.add_argument("--host", help="bind address (MARC_HOST, default 127.0.0.1; 0.0.0.0 = all interfaces)")
    serve.add_argument("--port", type=int, help="bind port (MARC_PORT, default 8000)")
    serve.add_argument(
        "--variant",
        choices=["auto", "fp32", "int8", "fp16"],
        help="model variant (MARC_VARIANT; auto = fp16 on CUDA if exported; on CPU int8 or fp32, "
        "whichever is measured faster at load)",
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
    serve.add_argument(
        "--max-batch-size", type=int, help="items per ONNX run (MARC_MAX_BATCH_SIZE; auto: CPU 16, CUDA 256)"
    )
    serve.add_argument("--max-wait-ms", type=float, help="batch fill wait (MARC_MAX_WAIT_MS, 2)")
    serve.add_argument("--max-queue-items", type=int, help="queue limit before 503 (MARC_MAX_QUEUE_ITEMS)")
    serve.add_argument(
        "--drain-seconds", type=float, help="on SIGTERM, stay up not-ready this long (MARC_DRAIN_SECONDS, 0)"
    )
    serve.add_argument(
        "--keep-alive-seconds",
        type=float,
        help="idle keep-alive connections stay open this long (MARC_KEEP_ALIVE_SECONDS, 75; keep it above "
        "a load balancer's idle timeout)",
    )
    serve.add_argument(
        "--workers",
        type=int,
        help="server processes sharing the port, each with its own models (MARC_WORKERS; auto: 1 on "
        "CPU, several on CUDA); metrics are aggregated across them",
    )
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="MARC_LOG_LEVEL")
    serve.set_defaults(handler=run_serve)

    pre = subparsers.add_parser(
        "precompute",
        help="embed an items.jsonl catalogue (or one shard of it) into Redis and/or a vector file",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Offline pre-cache: stream items.jsonl ({item_id, text} per line), embed in "
        "length-sorted batches and write the vectors to Redis under the service's text and id keys "
        "(items already there are skipped, so an interrupted run resumes) and/or to --out. Use the "
        "same --variant and cache prefix as the service, or it will not find the vectors. With "
        "--shard i/N only the items of shard i are embedded: N workers (a Kubernetes Indexed Job) "
        "split one catalogue without coordinating.",
        epilog=PRECOMPUTE_EXIT_CODES,
    )
    pre.add_argument("--artifact", type=Path, help="artifact directory (MARC_ARTIFACT)")
    pre.add_argument("--items", type=Path, required=True, help="items.jsonl: one {item_id, text} per line")
    pre.add_argument("--redis-url", help="write to this Redis (MARC_REDIS_URL)")
    pre.add_argument(
        "--out", type=Path, help="also write vectors to a .npy (+ <stem>.ids.jsonl) or .parquet file"
    )
    pre.add_argument(
        "--shard",
        default="0/1",
        help="i/N: embed only shard i (0-based) of N; an item's shard is the first 8 bytes of "
        "sha256(item_id) as a big-endian integer mod N, the same in every process (default 0/1: all)",
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
    import signal

    from artifact.names import ArtifactError
    from service.app import create_app
    from service.lifecycle import DrainingServer, Lifecycle
    from service.memory import fix_malloc_thresholds, return_freed_memory
    from service.model.sources import ModelSetError
    from service.runtime import load_service_encoders
    from service.settings import Settings

    # Every `marc serve` flag is named after the setting it overrides.
    settings = _settings(args, {name: name for name in vars(args) if name in Settings.model_fields})
    logging.getLogger().setLevel(settings.log_level.upper())
    # A SIGHUP before the app installs its reload handler must not end the process (the default).
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    fix_malloc_thresholds()  # before any model is loaded: reloads then hand their memory back
    try:
        # Before the server starts: a bad artifact is one clear line and exit code 2, not a traceback.
        encoders = load_service_encoders(settings)
    except (ArtifactError, ModelSetError) as exc:
        print(f"marc serve: refusing to start: {exc}", file=sys.stderr)
        return 2
    # MARC_WORKERS=auto depends on the provider the models came up on (several per GPU).
    device = "cuda" if any(encoder.device == "cuda" for encoder in encoders.values()) else "cpu"
    workers = settings.serving_plan(device).workers
    if settings.workers == "auto":
        log.info("workers: %d (auto on %s)", workers, device)
    if workers > 1:
        from service.model.variant_choice import remembered
        from service.workers import serve_workers

        del encoders  # verified; each worker loads its own
        return_freed_memory()  # the parent only supervises: give the verified models' memory back
        return serve_workers(
            {**settings.model_dump(), "workers": workers},
            host=settings.host,
            port=settings.port,
            workers=workers,
            variant_choices=remembered(),  # every worker serves the variants measured here
        )
    lifecycle = Lifecycle()
    app = create_app(settings, lifecycle, encoders)
    del encoders  # the app hands them to the registry: a reload can then unload them
    # This process serves; --workers N runs N of them (service.workers).
    DrainingServer.serving(app, settings, lifecycle, host=settings.host, port=settings.port).run()
    return 0


def run_precompute(args: argparse.Namespace) -> int:
    from artifact.names import ArtifactError
    from records.errors import DataError
    from service.cache.keys import KeySpace
    from service.cache.stores import RedisCache
    from service.cache.values import ValueCodec
    from service.model.encoder import load_encoder
    from service.precompute import count_shard, iter_shard, precompute
    from service.shards import Shard
    from service.vector_files import open_vector_writer

    def refuse(code: int, message: str) -> int:
        print(f"marc precompute: {message}", file=sys.stderr)
        return code

    flags = {
        "artifact": "artifact",
        "redis_url": "redis_url",
        "variant": "variant",
        "provider": "provider",
        "cache_prefix": "cache_prefix",
        "ttl_seconds": "cache_ttl_seconds",
        "cache_dtype": "cache_dtype",
    }
    try:
        shard = Shard.parse(args.shard)
        settings = _settings(args, flags)
    except ValueError as exc:
        return refuse(PRECOMPUTE_USAGE, str(exc))
    except SystemExit as exc:
        return refuse(PRECOMPUTE_USAGE, str(exc))
    if settings.artifact is None:
        return refuse(
            PRECOMPUTE_USAGE, "marc precompute embeds with one model: give --artifact (or MARC_ARTIFACT)"
        )
    if not settings.redis_url and args.out is None:
        return refuse(PRECOMPUTE_USAGE, "nothing to write: give --redis-url (or MARC_REDIS_URL) and/or --out")
    if args.batch_size < 1 or args.chunk_items < 1:
        return refuse(PRECOMPUTE_USAGE, "--batch-size and --chunk-items must be >= 1")
    try:
        count = count_shard(args.items, shard)
    except DataError as exc:
        return refuse(PRECOMPUTE_CATALOGUE, str(exc))
    try:
        encoder = load_encoder(
            settings.artifact,
            variant=settings.variant,
            provider=settings.provider,
            intra_threads=settings.ort_intra_threads,
            inter_threads=settings.ort_inter_threads,
            int8_min_speedup=settings.int8_min_speedup,
        )
    except (ArtifactError, ValueError) as exc:
        return refuse(PRECOMPUTE_ARTIFACT, str(exc))
    encoder.io_binding = settings.serving_plan(encoder.device).io_binding  # as the service would run
    try:
        writer = open_vector_writer(args.out, encoder.dim) if args.out else None
    except ValueError as exc:
        return refuse(PRECOMPUTE_USAGE, str(exc))
    keys = KeySpace(settings.cache_prefix, encoder.artifact.fingerprint, settings.cache_dtype)
    codec = ValueCodec(settings.cache_dtype, encoder.dim)

    async def run() -> Any:
        redis = None
        if settings.redis_url:
            # A batch job waits longer per call than the service, and stops instead of skipping.
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
                iter_shard(args.items, shard),
                keys=keys,
                codec=codec,
                redis=redis,
                writer=writer,
                batch_size=args.batch_size,
                chunk_items=max(args.chunk_items, args.batch_size),
                total=count.in_shard,
                description=f"shard {shard}",
            )
        finally:
            if redis is not None:
                await redis.close()

    try:
        report = asyncio.run(run())
    except DataError as exc:  # the file changed under the job after it was checked
        return refuse(PRECOMPUTE_CATALOGUE, str(exc))
    # The file holds the items that were stored; the count line says how many did not make it.
    written = writer.close() if writer else []
    print(
        f"shard {shard}: {count.catalogue} items in the catalogue, {count.in_shard} in this shard: "
        f"{report.reused} already cached, {report.computed} computed, {report.failed} failed "
        f"({count.in_shard - report.items} not reached) in {report.seconds:.1f} s; model "
        f"{encoder.artifact.name} variant {encoder.artifact.variant} ({encoder.variant_choice.why}) "
        f"fingerprint {encoder.artifact.fingerprint[:16]}"
        + (f"; wrote {', '.join(str(p) for p in written)}" if written else "")
    )
    if report.cache_error is not None:
        stopped = f"redis {settings.redis_url}: {report.cache_error} (re-run to resume)"
        return refuse(PRECOMPUTE_REDIS, stopped)
    if report.failed:
        failed = f"the model failed on {report.failed} items (logged); re-run to retry them"
        return refuse(PRECOMPUTE_PARTIAL, failed)
    return PRECOMPUTE_DONE
