"""Headless benchmark: the service against its limits, side by side, measured in one run.

Starts what it needs on free ports of 127.0.0.1 - a private redis-server, `marc serve` on the artifact,
the naive and bare reference servers (loadtest.reference_servers) - drives them with the load generator
in a separate process (loadtest.loadgen), measures ONNX Runtime directly for the limits, and stops
everything at the end. Every load is bounded by a request count and a time limit.

Rows (ratios; absolute numbers on a shared 2-core machine mean little):
 1. cold path: service items/s (concurrent single-item clients, all misses) / raw ORT at its best
    batch size, the better of one run over all cores and two single-threaded runs side by side, both
    on the served variant (int8 when the artifact has it), for long (~26-token) and short (~11-token)
    texts; the naive server on the long ones
 2. hot path: service requests/s (all hits, the README's request: items with ids) / bare FastAPI
    endpoint, latency percentiles of both, and p99 at half the peak rate (open loop); /v1/embeddings /
    /v1/embed; ``--workers`` processes / one (`marc serve --workers N` on the same Redis); the service
    without its response memo / the bare endpoint; items without ids (a shape recommender services
    rarely send, labelled as such) / the bare endpoint
 3. truncation: raw ORT items/s at the cut layer L / the same checkpoint at full depth N
 4. precision: raw ORT int8 / fp32 items/s, cosine similarity between their vectors
 5. memory: Redis bytes per cached item (float16 and float32 values) / a float32 final-layer state;
    artifact size / full model
 7. around the model (`loadtest.around_model`): the service's CPU per new item outside the model's
    runs, on the artifact's near-free twin, for 1-item and 32-item /v1/embed requests with ids and
    32-input /v1/embeddings requests, in bare-endpoint requests measured beside it
 6. with ``--peer infinity`` (`loadtest.peer_infinity`): the service / Infinity serving the same
    truncated backbone with each of its CPU engines, cold (single-item clients, and requests of
    ``request_texts`` texts) and hot (its vector cache against the service's cache), side by side

Throughputs are the best of ``rounds`` rounds (interference only ever slows a run down); limits are
re-measured in every round next to what they limit.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from artifact.manifest import Manifest, read_manifest
from loadtest.around_model import measure as measure_around
from loadtest.bench_report import BenchReport, build_report
from loadtest.depth_variant import checkpoint_of, full_depth_artifact
from loadtest.loadgen import LoadResult, LoadSpec, Workload, run_in_subprocess
from loadtest.peer_infinity import (
    ENGINES,
    PEER_MODEL_NAME,
    PeerServer,
    build_peer_model,
    ensure_venv,
    peer_versions,
)
from loadtest.phases import bare_endpoint, closed_loop, warm_pool
from loadtest.processes import RedisServer, ServerProcess, marc_serve
from loadtest.raw_ort import ColdLimit, RawModel, Throughput, best_throughput, cosine_similarities
from loadtest.texts import TEXT_LENGTHS, TextLength, item_texts
from marc.machine import machine_info
from service.cache.values import ValueCodec
from service.model.encoder import cpu_variant

log = logging.getLogger("marc.bench")

# Text index ranges, far apart so no phase ever sees another phase's texts.
RAW_TEXTS_START = 0
POOL_START = 10_000_000
COLD_START = 20_000_000
TEXTS_PER_ROUND = 10_000_000  # > 2 x (MAX_REQUESTS + warm-up): rounds and servers never share texts
PEER_START = 100_000_000  # the peer phases' cold texts (and the service's next to them)
PEER_PHASE_TEXTS = 2_000_000
PEER_BATCH_SIZE = 32  # Infinity's --batch-size


@dataclass(frozen=True)
class BenchOptions:
    artifact: Path
    checkpoint: Path | None = None
    quick: bool = False
    duration: float = 10.0  # seconds per load phase
    concurrency: int = 32
    hot_items: int = 1
    rounds: int = 2
    cache_dir: Path = Path(".cache/bench")
    workers: int = 2  # the hot path with `marc serve --workers N` too (1 = not measured)
    peer: str | None = None  # "infinity": the peer rows
    peer_venv: Path = Path(".cache/peer-infinity")
    install_peer: bool = False
    request_texts: int = 32  # texts per request in the "batch requests" cold phases

    @property
    def raw_seconds(self) -> float:
        return self.duration / 4

    @property
    def batch_sizes(self) -> tuple[int, ...]:
        return (1, 8, 32) if self.quick else (1, 8, 16, 32, 64)

    @property
    def pool_size(self) -> int:
        return 64 if self.quick else 512

    @property
    def cosine_items(self) -> int:
        return 64 if self.quick else 256

    def to_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


def _best_of(measure: Callable[[], Throughput], times: int = 2) -> Throughput:
    return max((measure() for _ in range(times)), key=lambda t: t.items_per_second)


def _closed(server: ServerProcess, workload: Workload, options: BenchOptions, warmup: int) -> LoadResult:
    return closed_loop(
        server, workload, seconds=options.duration, concurrency=options.concurrency, warmup=warmup
    )


def _open(url: str, workload: Workload, options: BenchOptions, rate: float) -> LoadResult:
    spec = LoadSpec(
        base_url=url,
        workload=workload,
        max_requests=int(rate * options.duration) + 1,
        max_seconds=options.duration,
        rate=rate,
        warmup_requests=options.concurrency,
        concurrency=options.concurrency,
    )
    return run_in_subprocess(spec)


def _full_depth_speed(
    directory: Path, texts: list[str], batch: int, seconds: float
) -> tuple[Throughput, int]:
    """Throughput and model bytes of the full-depth twin (its session is freed on return)."""
    full = RawModel.open(directory, "fp32")
    return _best_of(lambda: full.throughput(texts, batch, seconds)), full.model_bytes


def _int8_model(options: BenchOptions, manifest: Manifest) -> RawModel:
    """The artifact's int8 variant; without one, what `marc export --int8` would make, quantised once
    into the cache (the export's parity gate is not applied here: the row reports the cosine)."""
    if "int8" in manifest.variants:
        return RawModel.open(options.artifact, "int8")
    path = options.cache_dir / f"int8-{manifest.fingerprint[:16]}.onnx"
    if not path.is_file():
        from export.quantize import quantize_int8  # needs onnx: the train extra, only used here

        log.info("no int8 variant in %s: quantising model.onnx into %s (once)", options.artifact, path)
        partial = path.with_suffix(".partial")
        quantize_int8(
            options.artifact / manifest.variants["fp32"].file,
            partial,
            options.artifact / manifest.tokenizer.file,
        )
        partial.rename(path)
    return RawModel.from_file(options.artifact, path)


def measure_raw(options: BenchOptions, manifest: Manifest, checkpoint: Path, variant: str) -> dict[str, Any]:
    """Rows 3 and 4 and the cold limit's batch size: ONNX Runtime alone, before any server runs."""
    texts = item_texts(RAW_TEXTS_START, 512)
    fp32 = RawModel.open(options.artifact, "fp32")
    served = RawModel.open(options.artifact, variant)
    log.info("raw ONNX Runtime (%s): batch-size sweep %s", variant, options.batch_sizes)
    best, sweep = best_throughput(served, texts, options.batch_sizes, options.raw_seconds)
    log.info("  items/s by batch size: %s", {t.batch_size: round(t.items_per_second, 1) for t in sweep})
    short_texts = item_texts(RAW_TEXTS_START, 512, "short")
    best_short, sweep_short = best_throughput(served, short_texts, options.batch_sizes, options.raw_seconds)
    log.info("  short texts: %s", {t.batch_size: round(t.items_per_second, 1) for t in sweep_short})
    del served
    batch = best.batch_size

    full_dir = full_depth_artifact(manifest, checkpoint, options.cache_dir)
    log.info(
        "truncation: L=%d vs N=%d at batch %d", manifest.backbone.layer, manifest.backbone.total_layers, batch
    )
    cut_speed = _best_of(lambda: fp32.throughput(texts, batch, options.raw_seconds))
    full_speed, full_bytes = _full_depth_speed(full_dir, texts, batch, options.raw_seconds)
    log.info("  items/s: L %.1f, full depth %.1f", cut_speed.items_per_second, full_speed.items_per_second)

    int8 = _int8_model(options, manifest)
    log.info("precision: int8 vs fp32 at batch %d", batch)
    int8_speed = _best_of(lambda: int8.throughput(texts, batch, options.raw_seconds))
    fp32_speed = _best_of(lambda: fp32.throughput(texts, batch, options.raw_seconds))
    cosine_texts = item_texts(RAW_TEXTS_START + 512, options.cosine_items)
    cosines = cosine_similarities(fp32.embed(cosine_texts, batch), int8.embed(cosine_texts, batch))
    return {
        "sweep": sweep,
        "best": best,
        "sweep_short": sweep_short,
        "best_short": best_short,
        "cut": cut_speed,
        "full": full_speed,
        "full_depth_artifact": str(full_dir),
        "full_model_bytes": full_bytes,
        "fp32_model_bytes": fp32.model_bytes,
        "int8_model_bytes": int8.model_bytes,
        "int8_source": "artifact" if "int8" in manifest.variants else "quantised by the benchmark",
        "int8": int8_speed,
        "fp32": fp32_speed,
        "cosine_mean": float(cosines.mean()),
        "cosine_min": float(cosines.min()),
    }


def run_benchmark(options: BenchOptions) -> BenchReport:
    manifest = read_manifest(options.artifact)
    checkpoint = checkpoint_of(manifest, options.checkpoint)  # fail before anything starts
    options.cache_dir.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    variant = cpu_variant(manifest)  # the CPU variant (what auto serves where int8 is measured faster)
    peer_python = None
    if options.peer is not None:  # before anything is measured: a missing peer fails fast
        peer_python = ensure_venv(options.peer_venv, install=options.install_peer)
    raw = measure_raw(options, manifest, checkpoint, variant)
    cold_limit = ColdLimit.open(options.artifact, variant)
    # Per text length: the cold limit's texts and raw ORT's best batch size for them.
    best_batch = {"long": raw["best"].batch_size, "short": raw["best_short"].batch_size}
    limits: dict[TextLength, tuple[list[str], int]] = {
        length: (item_texts(RAW_TEXTS_START, 512, length), best_batch[length]) for length in TEXT_LENGTHS
    }

    # The README's request: items with ids, as recommender services send them.
    hot = Workload(
        kind="pool",
        start=POOL_START,
        pool_size=options.pool_size,
        items_per_request=options.hot_items,
        ids=True,
    )
    hot_no_ids = Workload(**{**asdict(hot), "ids": False})
    hot_openai = Workload(
        route="/v1/embeddings",
        kind="pool",
        start=POOL_START,
        pool_size=options.pool_size,
        items_per_request=options.hot_items,
    )
    rounds: list[dict[str, Any]] = []
    peer: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as scratch_dir, RedisServer() as redis_server:
        scratch = Path(scratch_dir)
        # The served variant, named (never measured per run): the cold limit runs the same one.
        service_args = ["--variant", variant, "--log-level", "warning"]

        def serve(name: str, log_name: str, *args: str, **settings: str) -> ServerProcess:
            return marc_serve(
                name,
                options.artifact,
                redis_server.url,
                scratch / log_name,
                args=[*service_args, *args],
                settings=settings,
            )

        service = serve("marc serve", "serve.log")
        naive_args = ["loadtest.reference_servers", "naive", "--artifact", str(options.artifact)]
        naive = ServerProcess("naive server", naive_args, log_path=scratch / "naive.log")
        workers = None
        if options.workers > 1:
            n = str(options.workers)
            workers = serve(f"marc serve --workers {n}", "serve-workers.log", "--workers", n)
        # The same service without the response memo: the hot path served by the near-cache alone.
        no_memo = serve("marc serve (no response memo)", "serve-no-memo.log", MARC_RESPONSE_MEMO_BYTES="0")
        with service, naive, no_memo, workers or contextlib.nullcontext():
            memory_before, keys_before = redis_server.data_memory(), redis_server.key_count()
            warm_pool(service.url, POOL_START, options.pool_size, ids=True)
            bare = bare_endpoint(service.url, hot, scratch)
            payload = (scratch / "payload.json").read_bytes()
            with bare:
                for number in range(options.rounds):
                    log.info("round %d/%d", number + 1, options.rounds)
                    rounds.append(
                        _round(
                            options,
                            number,
                            service,
                            naive,
                            bare,
                            hot,
                            hot_no_ids,
                            hot_openai,
                            workers,
                            no_memo,
                            cold_limit,
                            limits,
                        )
                    )
            if options.peer is not None and peer_python is not None:
                peer = _peer_phases(options, manifest, peer_python, service, hot_openai, scratch)
            memory_after, keys_after = redis_server.data_memory(), redis_server.key_count()
            memory_usage_sample = redis_server.sampled_key_bytes()
        # The same pool texts cached as float16 values (MARC_CACHE_DTYPE=float16, own key space).
        with serve("marc serve (float16 cache)", "serve-float16.log", "--cache-dtype", "float16") as half:
            half_before, half_keys_before = redis_server.data_memory(), redis_server.key_count()
            warm_pool(half.url, POOL_START, options.pool_size)
            half_after, half_keys_after = redis_server.data_memory(), redis_server.key_count()
            half_memory_usage_sample = redis_server.sampled_key_bytes(match="*:f16t:*")
        log.info("around the model: the near-free twin, %d round(s)", options.rounds)
        around = measure_around(
            options.artifact, options.cache_dir, redis_server.url, scratch, options.duration, options.rounds
        )

    cached_items = keys_after - keys_before
    half_items = half_keys_after - half_keys_before
    memory = {
        "items": cached_items,
        "redis_bytes_per_item": (memory_after - memory_before) / max(cached_items, 1),
        "memory_usage_command_mean": memory_usage_sample,
        "value_bytes": ValueCodec("float32", manifest.dim).value_bytes,
        "raw_state_bytes": manifest.backbone.hidden_size * 4,
        "float16": {
            "items": half_items,
            "redis_bytes_per_item": (half_after - half_before) / max(half_items, 1),
            "memory_usage_command_mean": half_memory_usage_sample,
            "value_bytes": ValueCodec("float16", manifest.dim).value_bytes,
        },
    }
    return build_report(
        options.to_dict(),
        manifest,
        machine,
        raw,
        rounds,
        memory,
        len(payload),
        variant=variant,
        peer=peer,
        around=around,
    )


def _round(
    options: BenchOptions,
    number: int,
    service: ServerProcess,
    naive: ServerProcess,
    bare: ServerProcess,
    hot: Workload,
    hot_no_ids: Workload,
    hot_openai: Workload,
    workers: ServerProcess | None,
    no_memo: ServerProcess,
    cold_limit: ColdLimit,
    limits: dict[TextLength, tuple[list[str], int]],
) -> dict[str, Any]:
    offset = COLD_START + number * TEXTS_PER_ROUND
    phases: dict[str, Any] = {}
    for length, (texts, batch) in limits.items():
        log.info(
            "  cold path, %s texts: raw ORT limit at batch %d, service (%d clients)",
            length,
            batch,
            options.concurrency,
        )
        suffix = "" if length == "long" else f"_{length}"
        # A short text is never a long one: both lengths can start at the same index.
        workload = Workload(kind="unique", start=offset, text_length=length)
        one_run, two_runs = cold_limit.measure(texts, batch, options.raw_seconds)
        phases["limit_one_run" + suffix], phases["limit_two_runs" + suffix] = one_run, two_runs
        phases["limit" + suffix] = max(one_run, two_runs, key=lambda t: t.items_per_second)
        phases["service_cold" + suffix] = _closed(service, workload, options, warmup=options.concurrency)
    cold_naive = Workload(kind="unique", start=offset + TEXTS_PER_ROUND // 2)
    naive_cold = _closed(naive, cold_naive, options, warmup=options.concurrency)
    log.info("  hot path: service and bare endpoint, closed loop then open loop at half peak")
    service_hot = _closed(service, hot, options, warmup=options.concurrency * 4)
    bare_hot = _closed(bare, hot, options, warmup=options.concurrency * 4)
    service_hot_openai = _closed(service, hot_openai, options, warmup=options.concurrency * 4)
    service_half = _open(service.url, hot, options, rate=service_hot.requests_per_second / 2)
    bare_half = _open(bare.url, hot, options, rate=bare_hot.requests_per_second / 2)
    phases |= {
        "naive_cold": naive_cold,
        "service_hot": service_hot,
        "bare_hot": bare_hot,
        "service_hot_openai": service_hot_openai,
        "service_half": service_half,
        "bare_half": bare_half,
    }
    phases["no_memo_hot"] = _closed(no_memo, hot, options, warmup=options.concurrency * 4)
    phases["service_hot_no_ids"] = _closed(service, hot_no_ids, options, warmup=options.concurrency * 4)
    if workers is not None:
        log.info("  hot path: marc serve --workers %d", options.workers)
        phases["workers_hot"] = _closed(workers, hot, options, warmup=options.concurrency * 4)
    return phases


def _peer_phases(
    options: BenchOptions,
    manifest: Manifest,
    python: Path,
    service: ServerProcess,
    hot_openai: Workload,
    scratch: Path,
) -> dict[str, Any]:
    """The service and Infinity's engines, one after the other, on the same load phases (fresh texts
    for each): single-item clients, requests of ``request_texts`` texts, and the hot path."""
    model = build_peer_model(
        manifest.backbone.source, manifest.backbone.layer, manifest.max_length, options.cache_dir, python
    )
    batch_clients = max(1, options.concurrency // 8)
    step = PEER_PHASE_TEXTS

    def single(route: str, model_name: str, start: int) -> Workload:
        return Workload(route=route, model=model_name, kind="unique", start=start)

    def batched(route: str, model_name: str, start: int) -> Workload:
        return Workload(
            route=route, model=model_name, kind="unique", start=start, items_per_request=options.request_texts
        )

    def batched_options() -> BenchOptions:
        return BenchOptions(**{**options.__dict__, "concurrency": batch_clients})

    results: dict[str, Any] = {"versions": peer_versions(python), "model": str(model), "engines": {}}
    log.info(
        "peer: the service on the same phases (%d single-item clients, %d clients x %d texts)",
        options.concurrency,
        batch_clients,
        options.request_texts,
    )
    results["service_cold"] = _closed(service, single("/v1/embeddings", "marc", PEER_START), options, 8)
    results["service_cold_batch"] = _closed(
        service, batched("/v1/embeddings", "marc", PEER_START + step), batched_options(), 2
    )
    for number, engine in enumerate(ENGINES):
        log.info("peer: infinity, %s engine", engine)
        start = PEER_START + (2 + 2 * number) * step
        with PeerServer(
            python, model, engine, batch_size=PEER_BATCH_SIZE, log_path=scratch / f"peer-{engine}.log"
        ) as server:
            results["engines"][engine] = {
                "cold": _closed(server, single("/embeddings", PEER_MODEL_NAME, start), options, 8),
                "cold_batch": _closed(
                    server, batched("/embeddings", PEER_MODEL_NAME, start + step), batched_options(), 2
                ),
            }
    best = max(ENGINES, key=lambda e: results["engines"][e]["cold"].items_per_second)
    results["best_engine"] = best
    log.info("peer: infinity, %s engine with its vector cache (hot path)", best)
    with PeerServer(
        python,
        model,
        best,
        batch_size=PEER_BATCH_SIZE,
        log_path=scratch / f"peer-{best}-cache.log",
        cache=True,
    ) as server:
        peer_hot = Workload(
            route="/embeddings",
            model=PEER_MODEL_NAME,
            kind="pool",
            start=POOL_START,
            pool_size=options.pool_size,
            items_per_request=options.hot_items,
        )
        _warm_peer(server.url, options.pool_size)
        results["peer_hot"] = _closed(server, peer_hot, options, warmup=options.concurrency * 4)
    results["service_hot"] = _closed(service, hot_openai, options, warmup=options.concurrency * 4)
    return results


def _warm_peer(url: str, size: int) -> None:
    """Every pool text once through the peer, so its vector cache holds them."""
    texts = item_texts(POOL_START, size)
    with httpx.Client(base_url=url, timeout=300) as client:
        for i in range(0, size, 32):
            response = client.post("/embeddings", json={"input": texts[i : i + 32], "model": PEER_MODEL_NAME})
            response.raise_for_status()
