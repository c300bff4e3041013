"""Headless benchmark: the service against its limits, side by side, measured in one run.

Starts what it needs on free ports of 127.0.0.1 - a private redis-server, `marc serve` on the artifact,
the naive and bare reference servers (loadtest.reference_servers) - drives them with the load generator
in a separate process (loadtest.loadgen), measures ONNX Runtime directly for the limits, and stops
everything at the end. Every load is bounded by a request count and a time limit.

Rows (ratios; absolute numbers on a shared 2-core machine mean little):
 1. cold path: service items/s (concurrent single-item clients, all misses) / raw ORT at its best
    batch size; the same for the naive server
 2. hot path: service requests/s (all hits) / bare FastAPI endpoint, latency percentiles of both, and
    p99 at half the peak rate (open loop)
 3. truncation: raw ORT items/s at the cut layer L / the same checkpoint at full depth N
 4. precision: raw ORT int8 / fp32 items/s, cosine similarity between their vectors
 5. memory: Redis bytes per cached item (float16 and float32 values) / a float32 final-layer state;
    artifact size / full model

Throughputs are the best of ``rounds`` rounds (interference only ever slows a run down); limits are
re-measured in every round next to what they limit.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx

from loadtest.depth_variant import checkpoint_of, full_depth_artifact
from loadtest.loadgen import LoadResult, LoadSpec, Workload, body_factory, run_in_subprocess
from loadtest.processes import RedisServer, ServerProcess
from loadtest.raw_ort import RawModel, Throughput, best_throughput, cosine_similarities
from loadtest.texts import item_texts
from service.artifact import Manifest, read_manifest
from service.cache_values import ValueCodec

log = logging.getLogger("marc.bench")

# Text index ranges, far apart so no phase ever sees another phase's texts.
RAW_TEXTS_START = 0
POOL_START = 10_000_000
COLD_START = 20_000_000
TEXTS_PER_ROUND = 10_000_000  # > 2 x (MAX_REQUESTS + warm-up): rounds and servers never share texts
MAX_REQUESTS = 1_000_000  # per closed-loop phase; the time limit ends it first

TARGETS = {
    "cold_ratio": 0.9,
    "hot_ratio": 0.6,
    "hot_p99_half_peak_ms": 10.0,
    "truncation_speedup": 1.8,
    "int8_speedup": 1.5,
    "int8_cosine": 0.99,
    "cached_vector_fraction": 1 / 12,
}


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


@dataclass
class BenchReport:
    machine: dict[str, Any]
    options: dict[str, Any]
    rows: list[dict[str, Any]]
    details: dict[str, Any] = field(default_factory=dict)


def _best(results: list[LoadResult], key: Callable[[LoadResult], float]) -> LoadResult:
    return max(results, key=key)


def _best_of(measure: Callable[[], Throughput], times: int = 2) -> Throughput:
    return max((measure() for _ in range(times)), key=lambda t: t.items_per_second)


def _met(value: float, target: float, higher_is_better: bool = True) -> bool:
    return value >= target if higher_is_better else value <= target


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [
            line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if "model name" in line
        ]
        cpu = names[0] if names else cpu
    load = os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,) * 3
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_average_1_5_15": [round(x, 2) for x in load],
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _closed(server: ServerProcess, workload: Workload, options: BenchOptions, warmup: int) -> LoadResult:
    """Closed-loop load on ``server``; the result carries the server's CPU time per request."""
    spec = LoadSpec(
        base_url=server.url,
        workload=workload,
        max_requests=MAX_REQUESTS,
        max_seconds=options.duration,
        concurrency=options.concurrency,
        warmup_requests=warmup,
    )
    cpu_before = server.cpu_seconds()
    result = run_in_subprocess(spec)
    result.server_cpu_ms_per_request = (server.cpu_seconds() - cpu_before) * 1000 / max(result.requests, 1)
    return result


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


def _warm_pool(url: str, start: int, size: int) -> None:
    """Put every pool text in the service's cache (so the hot path is all hits)."""
    texts = item_texts(start, size)
    with httpx.Client(base_url=url, timeout=120) as client:
        for i in range(0, size, 64):
            response = client.post("/v1/embed", json={"items": [{"text": t} for t in texts[i : i + 64]]})
            response.raise_for_status()


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
        from export.quantize import quantize_int8

        log.info("no int8 variant in %s: quantising model.onnx into %s (once)", options.artifact, path)
        partial = path.with_suffix(".partial")
        quantize_int8(
            options.artifact / manifest.variants["fp32"].file,
            partial,
            options.artifact / manifest.tokenizer.file,
        )
        partial.rename(path)
    return RawModel.from_file(options.artifact, path)


def measure_raw(options: BenchOptions, manifest: Manifest, checkpoint: Path) -> dict[str, Any]:
    """Rows 3 and 4 and the cold limit's batch size: ONNX Runtime alone, before any server runs."""
    texts = item_texts(RAW_TEXTS_START, 512)
    fp32 = RawModel.open(options.artifact, "fp32")
    log.info("raw ONNX Runtime: batch-size sweep %s", options.batch_sizes)
    best, sweep = best_throughput(fp32, texts, options.batch_sizes, options.raw_seconds)
    batch = best.batch_size
    log.info("  items/s by batch size: %s", {t.batch_size: round(t.items_per_second, 1) for t in sweep})

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


def _service_env() -> dict[str, str]:
    # The service must run on the benchmark's settings, not on MARC_* variables of the caller's shell.
    return {k: v for k, v in os.environ.items() if not k.startswith("MARC_")}


def run_benchmark(options: BenchOptions) -> BenchReport:
    manifest = read_manifest(options.artifact)
    checkpoint = checkpoint_of(manifest, options.checkpoint)  # fail before anything starts
    options.cache_dir.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    raw = measure_raw(options, manifest, checkpoint)
    batch = raw["best"].batch_size
    limit_model = RawModel.open(options.artifact, "fp32")
    limit_texts = item_texts(RAW_TEXTS_START, 512)

    hot = Workload(
        kind="pool", start=POOL_START, pool_size=options.pool_size, items_per_request=options.hot_items
    )
    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as scratch, RedisServer() as redis_server:
        service_args = [
            "marc.cli",
            "serve",
            "--artifact",
            str(options.artifact),
            "--redis-url",
            redis_server.url,
            # The limits (raw ORT, the naive server) run fp32; so does the service, whatever auto picks.
            "--variant",
            "fp32",
        ]
        service_args += ["--log-level", "warning"]
        service = ServerProcess("marc serve", service_args, ready_path="/readyz", env=_service_env())
        naive_args = ["loadtest.reference_servers", "naive", "--artifact", str(options.artifact)]
        naive = ServerProcess("naive server", naive_args)
        with service, naive:
            memory_before, keys_before = redis_server.data_memory(), redis_server.key_count()
            _warm_pool(service.url, POOL_START, options.pool_size)
            payload = httpx.post(
                service.url + "/v1/embed",
                content=body_factory(hot)(0),
                headers={"content-type": "application/json"},
            ).content
            payload_file = Path(scratch) / "payload.json"
            payload_file.write_bytes(payload)
            bare = ServerProcess(
                "bare endpoint", ["loadtest.reference_servers", "bare", "--payload", str(payload_file)]
            )
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
                            limit_model,
                            limit_texts,
                            batch,
                        )
                    )
            memory_after, keys_after = redis_server.data_memory(), redis_server.key_count()
            memory_usage_sample = redis_server.sampled_key_bytes()
        # The same pool texts cached as float16 values (MARC_CACHE_DTYPE=float16, own key space).
        half_args = [*service_args, "--cache-dtype", "float16"]
        with ServerProcess(
            "marc serve (float16 cache)", half_args, ready_path="/readyz", env=_service_env()
        ) as half:
            half_before, half_keys_before = redis_server.data_memory(), redis_server.key_count()
            _warm_pool(half.url, POOL_START, options.pool_size)
            half_after, half_keys_after = redis_server.data_memory(), redis_server.key_count()

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
            "value_bytes": ValueCodec("float16", manifest.dim).value_bytes,
        },
    }
    return _report(options, manifest, machine, raw, rounds, memory, len(payload))


def _round(
    options: BenchOptions,
    number: int,
    service: ServerProcess,
    naive: ServerProcess,
    bare: ServerProcess,
    hot: Workload,
    limit_model: RawModel,
    limit_texts: list[str],
    batch: int,
) -> dict[str, Any]:
    offset = COLD_START + number * TEXTS_PER_ROUND
    cold_service = Workload(kind="unique", start=offset)
    cold_naive = Workload(kind="unique", start=offset + TEXTS_PER_ROUND // 2)
    log.info(
        "  cold path: raw ORT limit at batch %d, service and naive server (%d clients)",
        batch,
        options.concurrency,
    )
    limit = limit_model.throughput(limit_texts, batch, options.raw_seconds)
    service_cold = _closed(service, cold_service, options, warmup=options.concurrency)
    naive_cold = _closed(naive, cold_naive, options, warmup=options.concurrency)
    log.info("  hot path: service and bare endpoint, closed loop then open loop at half peak")
    service_hot = _closed(service, hot, options, warmup=options.concurrency * 4)
    bare_hot = _closed(bare, hot, options, warmup=options.concurrency * 4)
    service_half = _open(service.url, hot, options, rate=service_hot.requests_per_second / 2)
    bare_half = _open(bare.url, hot, options, rate=bare_hot.requests_per_second / 2)
    return {
        "limit": limit,
        "service_cold": service_cold,
        "naive_cold": naive_cold,
        "service_hot": service_hot,
        "bare_hot": bare_hot,
        "service_half": service_half,
        "bare_half": bare_half,
    }


def _check_ok(name: str, result: LoadResult) -> None:
    if result.ok == 0:
        raise RuntimeError(f"{name}: no successful request (statuses {result.statuses})")


def _report(
    options: BenchOptions,
    manifest: Manifest,
    machine: dict[str, Any],
    raw: dict[str, Any],
    rounds: list[dict[str, Any]],
    memory: dict[str, Any],
    payload_bytes: int,
) -> BenchReport:
    for each in rounds:
        for name, result in each.items():
            if isinstance(result, LoadResult):
                _check_ok(name, result)
    # The cold path is compared with the limit measured in the same round (the machine's load drifts).
    cold_round = max(rounds, key=lambda r: r["service_cold"].items_per_second / r["limit"].items_per_second)
    limit: Throughput = cold_round["limit"]
    limit_ips = limit.items_per_second
    service_cold = cold_round["service_cold"]
    naive_round = max(rounds, key=lambda r: r["naive_cold"].items_per_second / r["limit"].items_per_second)
    naive_cold = naive_round["naive_cold"]
    naive_ratio = naive_cold.items_per_second / naive_round["limit"].items_per_second
    service_hot = _best([r["service_hot"] for r in rounds], lambda r: r.requests_per_second)
    bare_hot = _best([r["bare_hot"] for r in rounds], lambda r: r.requests_per_second)
    service_half = _best([r["service_half"] for r in rounds], lambda r: -r.latency_ms["p99"])
    bare_half = _best([r["bare_half"] for r in rounds], lambda r: -r.latency_ms["p99"])

    layer, total = manifest.backbone.layer, manifest.backbone.total_layers
    cold_ratio = service_cold.items_per_second / limit_ips
    hot_ratio = service_hot.requests_per_second / bare_hot.requests_per_second
    truncation = raw["cut"].items_per_second / raw["full"].items_per_second
    truncation_cpu = raw["cut"].items_per_cpu_second / raw["full"].items_per_cpu_second
    int8_speedup = raw["int8"].items_per_second / raw["fp32"].items_per_second
    int8_speedup_cpu = raw["int8"].items_per_cpu_second / raw["fp32"].items_per_cpu_second
    half = memory["float16"]
    vector_fraction = half["value_bytes"] / memory["raw_state_bytes"]
    redis_fraction = memory["redis_bytes_per_item"] / memory["raw_state_bytes"]
    half_redis_fraction = half["redis_bytes_per_item"] / memory["raw_state_bytes"]
    c = options.concurrency

    def lat(r: LoadResult) -> str:
        return f"p50/p95/p99 {r.latency_ms['p50']:.1f}/{r.latency_ms['p95']:.1f}/{r.latency_ms['p99']:.1f} ms"

    rows = [
        {
            "row": "1. cold path",
            "measured": f"service {service_cold.items_per_second:.1f} items/s ({c} single-item clients, "
            f"all misses; mean queue {service_cold.queue_ms_mean:.1f} ms, "
            f"inference {service_cold.inference_ms_mean:.1f} ms)",
            "limit": f"raw ORT {limit_ips:.1f} items/s (batch {limit.batch_size}, same round)",
            "ratio": cold_ratio,
            "target": f">= {TARGETS['cold_ratio']}",
            "met": _met(cold_ratio, TARGETS["cold_ratio"]),
        },
        {
            "row": "1b. cold path, naive server",
            "measured": f"naive {naive_cold.items_per_second:.1f} items/s (one model run per request)",
            "limit": f"raw ORT {naive_round['limit'].items_per_second:.1f} items/s (same round)",
            "ratio": naive_ratio,
            "target": "baseline",
            "met": None,
        },
        {
            "row": "2. hot path",
            "measured": f"service {service_hot.requests_per_second:.0f} req/s ({options.hot_items} item/req, "
            f"hit ratio {service_hot.cache_hit_ratio:.2f}), {lat(service_hot)}, "
            f"server CPU {service_hot.server_cpu_ms_per_request * 1000:.0f} us/req",
            "limit": f"bare endpoint {bare_hot.requests_per_second:.0f} req/s, {lat(bare_hot)}, "
            f"server CPU {bare_hot.server_cpu_ms_per_request * 1000:.0f} us/req",
            "ratio": hot_ratio,
            "target": f">= {TARGETS['hot_ratio']}",
            "met": _met(hot_ratio, TARGETS["hot_ratio"]),
        },
        {
            "row": "2b. hot path at half peak",
            "measured": f"service p99 {service_half.latency_ms['p99']:.2f} ms at "
            f"{service_half.requests_per_second:.0f} req/s (open loop), {lat(service_half)}",
            "limit": f"bare endpoint p99 {bare_half.latency_ms['p99']:.2f} ms at "
            f"{bare_half.requests_per_second:.0f} req/s",
            "ratio": service_half.latency_ms["p99"] / bare_half.latency_ms["p99"],
            "target": f"p99 < {TARGETS['hot_p99_half_peak_ms']:.0f} ms",
            "met": _met(
                service_half.latency_ms["p99"], TARGETS["hot_p99_half_peak_ms"], higher_is_better=False
            ),
        },
        {
            "row": "3. truncation",
            "measured": f"L={layer}: {raw['cut'].items_per_second:.1f} items/s "
            f"(per CPU-second: {truncation_cpu:.2f}x the full depth)",
            "limit": f"full depth N={total}: {raw['full'].items_per_second:.1f} items/s "
            f"(batch {raw['cut'].batch_size})",
            "ratio": truncation,
            "target": f">= {TARGETS['truncation_speedup']}x" + (" (at L=N/2)" if 2 * layer == total else ""),
            "met": _met(truncation, TARGETS["truncation_speedup"]) if 2 * layer == total else None,
        },
        {
            "row": "4. precision",
            "measured": f"int8 ({raw['int8_source']}) {raw['int8'].items_per_second:.1f} items/s, "
            f"(per CPU-second: {int8_speedup_cpu:.2f}x fp32), cosine vs fp32 mean "
            f"{raw['cosine_mean']:.4f} (min {raw['cosine_min']:.4f})",
            "limit": f"fp32 {raw['fp32'].items_per_second:.1f} items/s",
            "ratio": int8_speedup,
            "target": f">= {TARGETS['int8_speedup']}x, cosine >= {TARGETS['int8_cosine']}",
            "met": _met(int8_speedup, TARGETS["int8_speedup"])
            and raw["cosine_mean"] >= TARGETS["int8_cosine"],
        },
        {
            "row": "5. memory per cached item",
            "measured": f"MARC_CACHE_DTYPE=float16: value {half['value_bytes']} B (float16 x "
            f"{manifest.dim} + 4-byte token trailer), Redis {half['redis_bytes_per_item']:.0f} B/item "
            f"({half['items']} items, {half_redis_fraction:.3f} of the raw state); float32 (default): value "
            f"{memory['value_bytes']} B, Redis {memory['redis_bytes_per_item']:.0f} B/item with key, "
            f"expiry and overhead ({memory['items']} items, {redis_fraction:.3f} of the raw state; "
            f"MEMORY USAGE says {memory['memory_usage_command_mean']:.0f} B/key)",
            "limit": f"raw float32 state {memory['raw_state_bytes']} B "
            f"(hidden {manifest.backbone.hidden_size})",
            "ratio": vector_fraction,
            "target": "<= 1/12 (0.083)",
            "met": _met(vector_fraction, TARGETS["cached_vector_fraction"], higher_is_better=False),
        },
        {
            "row": "5b. artifact size",
            "measured": f"fp32 {raw['fp32_model_bytes'] / 1e6:.1f} MB, "
            f"int8 {raw['int8_model_bytes'] / 1e6:.1f} MB",
            "limit": f"full-depth fp32 {raw['full_model_bytes'] / 1e6:.1f} MB",
            "ratio": raw["fp32_model_bytes"] / raw["full_model_bytes"],
            "target": "reference",
            "met": None,
        },
    ]
    details = {
        "artifact": {
            "name": manifest.name,
            "fingerprint": manifest.fingerprint,
            "layer": layer,
            "total_layers": total,
        },
        "raw_sweep": [{**asdict(t), "items_per_second": t.items_per_second} for t in raw["sweep"]],
        "hot_payload_bytes": payload_bytes,
        "memory": memory,
        "full_depth_artifact": raw["full_depth_artifact"],
        "rounds": [
            {
                name: {**asdict(value), "items_per_second": value.items_per_second}
                | (
                    {"requests_per_second": value.requests_per_second}
                    if isinstance(value, LoadResult)
                    else {}
                )
                for name, value in each.items()
            }
            for each in rounds
        ],
    }
    options_dict = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(options).items()}
    options_dict["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return BenchReport(machine=machine, options=options_dict, rows=rows, details=details)


def to_markdown(report: BenchReport) -> str:
    lines = [
        "| Row | Measured | Limit / reference | Ratio | Target | Met |",
        "| --- | --- | --- | ---: | --- | --- |",
    ]
    for row in report.rows:
        met = {True: "yes", False: "**no**", None: "-"}[row["met"]]
        cells = [row["row"], row["measured"], row["limit"], f"{row['ratio']:.3f}", row["target"], met]
        lines.append("| " + " | ".join(cells) + " |")
    m = report.machine
    lines.append("")
    lines.append(
        f"Machine: {m['cpu']}, {m['cores']} cores, load average {m['load_average_1_5_15']} at the start; "
        f"Python {m['python']}; finished {report.options['finished_at']}."
    )
    return "\n".join(lines) + "\n"


def write_report(report: BenchReport, json_path: Path | None, markdown_path: Path | None) -> str:
    markdown = to_markdown(report)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(asdict(report), indent=2, default=str))
    if markdown_path is not None:
        markdown_path.parent.mkdir(parents=True, exist_ok=True)
        markdown_path.write_text(markdown)
    return markdown


def main() -> int:
    from loadtest.cli import build_standalone_parser, run_bench

    return run_bench(build_standalone_parser().parse_args())


if __name__ == "__main__":
    raise SystemExit(main())
