"""Prometheus metrics (their names: docs/ARCHITECTURE.md, "Metrics"). Each app owns its registry, so
several apps can live in one process (tests) without clashing on the global default registry.

What one model does (its batcher, its runs, its items) carries a ``model`` label: the served name,
never a name a request sent (an unknown name is a 404 before anything is counted), and a model's
series are removed when a reload stops serving it, so the label's values are the served set.

With several worker processes (`marc serve --workers N`, `service.workers`) prometheus-client runs in
its multiprocess mode: ``PROMETHEUS_MULTIPROC_DIR`` is set before the workers start, each worker's
values go to files there, and whichever worker answers a scrape renders all of them merged: counters
and histograms summed, gauges as their ``multiprocess_mode`` says (live workers only). A gauge read
from a function at scrape time cannot work there (the scrape is answered by one worker), so each
worker writes those gauges itself every `SAMPLE_SECONDS` (and right before it answers a scrape)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST
CACHE_RESULTS = ("hit", "miss", "error", "skipped", "busy")
RELOAD_RESULTS = ("ok", "failed")
MULTIPROC_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
SAMPLE_SECONDS = 1.0
NEAR_TIER = "near"  # the in-process near-cache (service.cache.near); the shared tier is "redis" or "memory"
MEMO_TIER = "memo"  # an answer kept whole by its request body (service.api.memo): its items, as hits


def multiprocess_dir() -> str | None:
    """Where the workers' metric files are, when prometheus-client runs in its multiprocess mode."""
    return os.environ.get(MULTIPROC_DIR_VARIABLE) or None


@dataclass(frozen=True)
class ModelMetrics:
    """One model's children of the per-model metrics (looked up once: labels() takes a lock and
    builds a key on every call), plus the shared cache counters its flow updates."""

    inference_duration: Histogram
    inference_cpu: Counter
    batch_size: Histogram
    queue_depth: Gauge
    items_embedded: Counter
    items_truncated: Counter
    items_deduplicated: Counter
    items_dropped: Counter
    overload_rejections: Counter
    cache_requests: Counter
    cache_writes: Counter
    sample: Callable[[Gauge, Callable[[], float]], None]  # `Metrics.sample`


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.multiprocess = multiprocess_dir() is not None
        # Per gauge (a labelled child), the function its value is read from: a reload's new batcher
        # replaces the old one's, so the retired model is not kept alive by its sampler.
        self._sampled: dict[Gauge, Callable[[], float]] = {}
        r = self.registry
        self.request_duration = Histogram(
            "marc_request_duration_seconds",
            "HTTP request latency, from the request reaching the app until the response is sent.",
            ["route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_duration = Histogram(
            "marc_inference_duration_seconds",
            "Duration of one ONNX Runtime run (padding and session.run).",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_cpu = Counter(
            "marc_inference_cpu_seconds",
            "CPU time of the model's runs, in the threads that called ONNX Runtime (with "
            "MARC_ORT_INTRA_THREADS=1 all of it; ORT's own intra-op threads are not counted): beside the "
            "process's CPU time it tells how much of it the service spends around the model.",
            ["model"],
            registry=r,
        )
        self.batch_size = Histogram(
            "marc_batch_size", "Items per ONNX Runtime run.", ["model"], buckets=BATCH_BUCKETS, registry=r
        )
        self.queue_depth = Gauge(
            "marc_queue_depth",
            "Items waiting for the model.",
            ["model"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.cache_requests = Counter(
            "marc_cache_requests_total",
            "Cache lookups per key, each counted once under the tier that settled it (memo = the items "
            "of an answer repeated whole for the same request body; near = the "
            "in-process near-cache, which only counts hits; redis or memory = the shared cache, asked "
            "for what the near-cache missed), by result: hit, miss; error = Redis failed or timed out, "
            "skipped = Redis not asked (skipped after failures), busy = no connection free in time "
            "(served without the cache in all three).",
            ["tier", "result"],
            registry=r,
        )
        self.cache_writes = Counter(
            "marc_cache_writes_total",
            "Redis write round trips (one pipelined call carries every write queued since the last), "
            "by result: ok, error (its entries are lost, as the requests that made them did not wait).",
            ["result"],
            registry=r,
        )
        self.cache_writes_dropped = Counter(
            "marc_cache_writes_dropped_total",
            "Cache entries dropped unwritten because MARC_CACHE_WRITE_QUEUE_ITEMS were already waiting "
            "(Redis slower than the writes coming in).",
            registry=r,
        )
        self.items_embedded = Counter(
            "marc_items_embedded_total", "Items run through the model.", ["model"], registry=r
        )
        self.items_truncated = Counter(
            "marc_items_truncated_total",
            "Items served whose text was longer than the model's max_length tokens (embedded truncated; "
            "the answer says `truncated: true`).",
            ["model"],
            registry=r,
        )
        self.items_deduplicated = Counter(
            "marc_items_deduplicated_total",
            "Items that shared the result of an identical text already queued or running.",
            ["model"],
            registry=r,
        )
        self.items_dropped = Counter(
            "marc_items_dropped_total",
            "Queued items dropped before the model because every client waiting for them had gone.",
            ["model"],
            registry=r,
        )
        self.overload_rejections = Counter(
            "marc_overload_rejections_total",
            "Requests refused with 503 because the queue was full.",
            ["model"],
            registry=r,
        )
        self.model_info = Gauge(
            "marc_model_info",
            "Each served model (value is always 1): its served name (model) and artifact name.",
            ["model", "name", "fingerprint", "layer", "dim", "provider", "variant"],
            multiprocess_mode="livemax",
            registry=r,
        )
        self.cache_skipped = Gauge(
            "marc_cache_skipped",
            "1 while Redis is skipped after failures (requests are served by the model; one request "
            "probes Redis every MARC_CACHE_RETRY_SECONDS), else 0 (with several workers: 1 while any "
            "worker skips Redis).",
            multiprocess_mode="livemax",
            registry=r,
        )
        self.in_process_cache_bytes = Gauge(
            "marc_in_process_cache_bytes",
            "Bytes held by this process's in-process stores, by cache: near (the near-cache, bounded by "
            "MARC_NEAR_CACHE_BYTES), memo (the response memo, MARC_RESPONSE_MEMO_BYTES), confirmed_ids "
            "(MARC_CONFIRMED_IDS_BYTES). They fill up to their bounds: RSS grows with them, then stays.",
            ["cache"],
            multiprocess_mode="liveall",  # per worker (a pid label): each holds its own
            registry=r,
        )
        self.model_reloads = Counter(
            "marc_model_reloads_total",
            "Reloads of the model configuration (SIGHUP, POST /admin/reload), by result: ok, failed "
            "(a new artifact was refused: the models served before keep serving; the log says why).",
            ["result"],
            registry=r,
        )
        for result in RELOAD_RESULTS:
            self.model_reloads.labels(result=result)
        for result in ("ok", "error"):
            self.cache_writes.labels(result=result)

    def for_model(self, model: str) -> ModelMetrics:
        return ModelMetrics(
            inference_duration=self.inference_duration.labels(model=model),
            inference_cpu=self.inference_cpu.labels(model=model),
            batch_size=self.batch_size.labels(model=model),
            queue_depth=self.queue_depth.labels(model=model),
            items_embedded=self.items_embedded.labels(model=model),
            items_truncated=self.items_truncated.labels(model=model),
            items_deduplicated=self.items_deduplicated.labels(model=model),
            items_dropped=self.items_dropped.labels(model=model),
            overload_rejections=self.overload_rejections.labels(model=model),
            cache_requests=self.cache_requests,
            cache_writes=self.cache_writes,
            sample=self.sample,
        )

    def forget_model(self, model: str) -> None:
        """Remove ``model``'s series (it is no longer served): the label stays bounded."""
        per_model = (
            self.inference_duration,
            self.inference_cpu,
            self.batch_size,
            self.queue_depth,
            self.items_embedded,
            self.items_truncated,
            self.items_deduplicated,
            self.items_dropped,
            self.overload_rejections,
        )
        self._sampled.pop(self.queue_depth.labels(model=model), None)
        for metric in per_model:
            with contextlib.suppress(KeyError):
                metric.remove(model)

    def sample(self, gauge: Gauge, read: Callable[[], float]) -> None:
        """``gauge`` shows ``read()``: at scrape time in one process, every `SAMPLE_SECONDS` (see
        `refresh`) in multiprocess mode."""
        if self.multiprocess:
            self._sampled[gauge] = read
        else:
            gauge.set_function(read)

    def refresh(self) -> None:
        """Write the sampled gauges' current values (multiprocess mode)."""
        for gauge, read in self._sampled.items():
            gauge.set(read())

    def render(self) -> bytes:
        if not self.multiprocess:
            return generate_latest(self.registry)
        self.refresh()
        merged = CollectorRegistry()
        MultiProcessCollector(merged)
        return generate_latest(merged)
