"""Async HTTP load generator (aiohttp + uvloop) for the benchmark, meant to run in its own process.

Two shapes of load, both bounded by a request count *and* a time limit, and only ever aimed at the
URL they are given (the benchmark gives 127.0.0.1):

* closed loop: ``concurrency`` clients, each sending its next request when the previous one answered
  (peak throughput);
* open loop: requests sent on a fixed schedule of ``rate`` per second whatever the answers do, and
  latency counted from the *scheduled* send time, so a stalled server cannot hide its queueing
  (no coordinated omission).

`run_in_subprocess(spec)` runs ``python -m loadtest.loadgen`` with the spec as JSON on stdin and returns
the result it prints: on a 2-core machine a client in the server's own process would steal its CPU.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import orjson

from loadtest.texts import TextLength, item_text

BODY_VARIANTS = 4096  # pre-encoded pool bodies cycled through, so the client spends no time on JSON


@dataclass(frozen=True)
class Workload:
    """What each request carries. ``unique``: texts never sent before (from index ``start`` on);
    ``pool``: texts drawn at random from ``pool_size`` texts starting at ``start``. A route ending in
    ``/embeddings`` (the service's OpenAI route, or a peer's) gets OpenAI bodies naming ``model``.
    ``text_length``: `loadtest.texts` long (~26 tokens) or short (~11 tokens) texts. ``ids``: each
    `/v1/embed` item also carries an id, ``sku-<text index>``, as recommender services send them (the
    README's request); OpenAI bodies have no ids."""

    route: str = "/v1/embed"
    model: str = "marc"
    kind: Literal["unique", "pool"] = "unique"
    items_per_request: int = 1
    start: int = 0
    pool_size: int = 0
    seed: int = 0
    text_length: TextLength = "long"
    ids: bool = False


@dataclass(frozen=True)
class LoadSpec:
    base_url: str
    workload: Workload
    max_requests: int
    max_seconds: float
    concurrency: int = 1
    rate: float = 0.0  # > 0: open loop at this many requests/s
    warmup_requests: int = 0
    max_in_flight: int = 512  # open loop: requests beyond this are counted as not sent


@dataclass
class LoadResult:
    requests: int = 0
    ok: int = 0
    items_ok: int = 0
    seconds: float = 0.0
    not_sent: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)
    queue_ms_mean: float = 0.0
    inference_ms_mean: float = 0.0
    cache_hit_ratio: float = 0.0
    response_bytes_mean: float = 0.0
    server_cpu_ms_per_request: float = math.nan  # filled in by the caller, who can see the server

    @property
    def requests_per_second(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    @property
    def items_per_second(self) -> float:
        return self.items_ok / self.seconds if self.seconds else 0.0


def embed_body(workload: Workload, indexes: list[int]) -> bytes:
    """The request body for the texts of ``indexes``, in ``workload``'s route's shape."""
    texts = [item_text(index, workload.text_length) for index in indexes]
    if workload.route.endswith("/embeddings"):
        return orjson.dumps({"input": texts, "model": workload.model, "encoding_format": "base64"})
    if workload.ids:
        items = [{"id": f"sku-{index}", "text": text} for index, text in zip(indexes, texts, strict=True)]
        return orjson.dumps({"items": items})
    return orjson.dumps({"items": [{"text": text} for text in texts]})


def body_factory(workload: Workload) -> Callable[[int], bytes]:
    """Request number -> request body."""
    k, start = workload.items_per_request, workload.start
    if workload.kind == "unique":
        return lambda i: embed_body(workload, [start + i * k + j for j in range(k)])
    if workload.pool_size < 1:
        raise ValueError("a pool workload needs pool_size >= 1")
    rng = random.Random(workload.seed)
    bodies = [
        embed_body(workload, [start + rng.randrange(workload.pool_size) for _ in range(k)])
        for _ in range(BODY_VARIANTS)
    ]
    return lambda i: bodies[i % len(bodies)]


class _Recorder:
    def __init__(self, items_per_request: int) -> None:
        self.items_per_request = items_per_request
        self.latencies: list[float] = []
        self.statuses: Counter[str] = Counter()
        self.queue_ms: list[float] = []
        self.inference_ms: list[float] = []
        self.cache_hits = 0
        self.response_bytes = 0

    def add(self, status: str, seconds: float, headers: Any = None, size: int = 0) -> None:
        self.statuses[status] += 1
        if status != "200":
            return
        self.latencies.append(seconds * 1000)
        self.response_bytes += size
        if headers is not None:
            if "x-queue-time-ms" in headers:
                self.queue_ms.append(float(headers["x-queue-time-ms"]))
                self.inference_ms.append(float(headers["x-inference-time-ms"]))
            self.cache_hits += int(headers.get("x-cache-hits", 0))

    def result(self, seconds: float, not_sent: int) -> LoadResult:
        ok = len(self.latencies)
        latencies = np.asarray(self.latencies or [float("nan")])
        p50, p95, p99 = np.percentile(latencies, [50, 95, 99])
        return LoadResult(
            requests=sum(self.statuses.values()),
            ok=ok,
            items_ok=ok * self.items_per_request,
            seconds=seconds,
            not_sent=not_sent,
            statuses=dict(self.statuses),
            latency_ms={"p50": p50, "p95": p95, "p99": p99, "mean": float(latencies.mean())},
            queue_ms_mean=float(np.mean(self.queue_ms)) if self.queue_ms else 0.0,
            inference_ms_mean=float(np.mean(self.inference_ms)) if self.inference_ms else 0.0,
            cache_hit_ratio=self.cache_hits / (ok * self.items_per_request) if ok else 0.0,
            response_bytes_mean=self.response_bytes / ok if ok else 0.0,
        )


async def run_load(spec: LoadSpec) -> LoadResult:
    import aiohttp

    url = spec.base_url.rstrip("/") + spec.workload.route
    body_for = body_factory(spec.workload)
    headers = {"content-type": "application/json"}
    limit = spec.max_in_flight if spec.rate > 0 else spec.concurrency
    connector = aiohttp.TCPConnector(limit=limit, ttl_dns_cache=None)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def send(i: int, recorder: _Recorder | None, since: float | None = None) -> None:
            started = time.perf_counter() if since is None else since
            try:
                async with session.post(url, data=body_for(i), headers=headers) as response:
                    payload = await response.read()
                    status, answer_headers = str(response.status), response.headers
            except (aiohttp.ClientError, TimeoutError) as exc:
                status, answer_headers, payload = type(exc).__name__, None, b""
            if recorder is not None:
                recorder.add(status, time.perf_counter() - started, answer_headers, len(payload))

        async def closed_loop(first: int, count: int, recorder: _Recorder | None, deadline: float) -> None:
            numbers = iter(range(first, first + count))

            async def client() -> None:
                for i in numbers:
                    if time.perf_counter() > deadline:
                        return
                    await send(i, recorder)

            await asyncio.gather(*(client() for _ in range(spec.concurrency)))

        # Warm-up requests use their own request numbers (fresh texts for `unique` workloads).
        warm = _Recorder(spec.workload.items_per_request)
        await closed_loop(spec.max_requests, spec.warmup_requests, warm, time.perf_counter() + 60)
        recorder = _Recorder(spec.workload.items_per_request)
        began = time.perf_counter()
        deadline = began + spec.max_seconds
        not_sent = 0
        if spec.rate > 0:
            pending: set[asyncio.Task[None]] = set()
            for i in itertools.count():
                scheduled = began + i / spec.rate
                if i >= spec.max_requests or scheduled > deadline:
                    break
                delay = scheduled - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                if len(pending) >= spec.max_in_flight:
                    not_sent += 1
                    continue
                task = asyncio.create_task(send(i, recorder, since=scheduled))
                pending.add(task)
                task.add_done_callback(pending.discard)
            if pending:
                await asyncio.wait(pending)
        else:
            await closed_loop(0, spec.max_requests, recorder, deadline)
        return recorder.result(time.perf_counter() - began, not_sent)


def run_in_subprocess(spec: LoadSpec, timeout_seconds: float | None = None) -> LoadResult:
    """Run ``spec`` in a fresh ``python -m loadtest.loadgen`` process and return its result."""
    limit = timeout_seconds or spec.max_seconds + 120
    done = subprocess.run(
        [sys.executable, "-m", "loadtest.loadgen"],
        input=json.dumps(asdict(spec)),
        capture_output=True,
        text=True,
        timeout=limit,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
    return LoadResult(**json.loads(done.stdout))


def _spec_from_json(raw: dict[str, Any]) -> LoadSpec:
    return LoadSpec(**{**raw, "workload": Workload(**raw["workload"])})


def main() -> None:
    import uvloop

    spec = _spec_from_json(json.load(sys.stdin))
    result = uvloop.run(run_load(spec))
    sys.stdout.write(json.dumps(asdict(result)))


if __name__ == "__main__":
    main()
