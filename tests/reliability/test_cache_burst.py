"""A burst of all-hit requests far larger than the Redis connection pool, against a `marc serve`
process and its own redis-server: the pool queues (a wait, bounded by the cache timeout), the
breaker stays closed, and every request is answered from the cache - no model run at all."""

from __future__ import annotations

import asyncio
import statistics
from pathlib import Path

import httpx

from tests.support.load import post_all
from tests.support.redis_server import RedisProcess
from tests.support.reliability_report import record
from tests.support.servers import ServeProcess

POOL = 8
BURST = 400  # 50x the pool (and over 4x the default pool of 64)
TEXTS = [f"burst catalogue item {i}: canvas tote bag, colour {i % 9}" for i in range(50)]


def test_a_burst_far_beyond_the_pool_is_served_from_the_cache(tiny_artifact: Path, tmp_path: Path) -> None:
    with (
        RedisProcess() as own_redis,
        ServeProcess(
            tmp_path / "serve.log",
            artifact=tiny_artifact,
            redis_url=own_redis.url,
            redis_max_connections=POOL,
            # Generous: this test is about the pool queueing, not about Redis timeouts; the load
            # generator shares the 2 cores with the server.
            cache_timeout_ms=2000,
            max_items_per_request=len(TEXTS),
            near_cache_bytes=0,  # every hit goes to Redis: the burst is on its pool
        ) as server,
    ):
        with httpx.Client(base_url=server.url, timeout=30) as client:
            warm = client.post("/v1/embed", json={"items": [{"text": t} for t in TEXTS]})
        assert warm.status_code == 200, warm.text
        embedded_before = server.metric("marc_items_embedded_total")
        bodies = [{"items": [{"text": TEXTS[i % len(TEXTS)]}]} for i in range(BURST)]
        result = asyncio.run(post_all(server.url, "/v1/embed", bodies, concurrency=BURST))
        embedded_after = server.metric("marc_items_embedded_total")
        by_result = {
            name: server.metric("marc_cache_requests_total", result=name)
            for name in ("hit", "miss", "error", "skipped", "busy")
        }
        ready = httpx.get(f"{server.url}/readyz", timeout=10).json()

    hits = [int(r.headers["x-cache-hits"]) for r in result.responses]
    record(
        "cache_burst",
        redis_pool_connections=POOL,
        concurrent_requests=BURST,
        answered_200=result.statuses[200],
        answered_from_cache=sum(hits),
        model_runs_during_burst=embedded_after - embedded_before,
        cache_errors_skips_busy=by_result["error"] + by_result["skipped"] + by_result["busy"],
        server_median_ms=statistics.median(float(r.headers["x-total-time-ms"]) for r in result.responses),
        server_max_ms=max(float(r.headers["x-total-time-ms"]) for r in result.responses),
    )
    assert result.statuses == {200: BURST} and not result.errors
    assert hits == [1] * BURST  # every response's x-cache-hits equals its item count
    assert embedded_after == embedded_before  # zero model runs
    assert by_result["error"] == by_result["skipped"] == by_result["busy"] == 0
    assert by_result["hit"] == BURST
    assert ready["cache"]["status"] == "ok"
