"""Redis faults under a steady load on a real server with its own redis-server: killed and restarted
(no request fails, errors are counted, hits come back by themselves) and paused (requests are served
from the model after the cache timeout instead of waiting for Redis)."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from service.cache.keys import ID_KIND
from tests.support.load import LoadLoop
from tests.support.redis_server import RedisProcess
from tests.support.reliability_report import record
from tests.support.servers import LiveServer

HOT_TEXTS = [f"hot catalogue item {i}: linen shirt, size {i % 5}, colour {i % 7}" for i in range(24)]
CACHE_TIMEOUT_MS = 150
CACHE_RETRY_SECONDS = 0.3


def _wait_for(condition: object, seconds: float, what: str) -> float:
    """Poll ``condition()`` until true; return how long it took."""
    started = time.monotonic()
    while not condition():  # type: ignore[operator]
        if time.monotonic() - started > seconds:
            pytest.fail(f"{what} not within {seconds} s")
        time.sleep(0.05)
    return time.monotonic() - started


@pytest.mark.slow
def _seconds_until_more_hits(live: LiveServer, more: int, what: str) -> float:
    """Seconds until the server has counted ``more`` cache hits than now (fails after 30 s)."""

    def hits() -> float:
        return live.metric("marc_cache_requests_total", result="hit")

    hits_now = hits()
    return _wait_for(lambda: hits() > hits_now + more, 30, what)


def _server_on(redis_process: RedisProcess, artifact: Path) -> LiveServer:
    """The service on ``redis_process`` with short cache timeouts and no near-cache (these tests inject
    faults into the shared tier: nothing may answer in front of it)."""
    return LiveServer(
        artifact=artifact,
        redis_url=redis_process.url,
        cache_timeout_ms=CACHE_TIMEOUT_MS,
        cache_retry_seconds=CACHE_RETRY_SECONDS,
        near_cache_bytes=0,
    )


def test_redis_killed_and_restarted_during_load(tiny_artifact: Path) -> None:
    with (
        RedisProcess() as own_redis,
        _server_on(own_redis, tiny_artifact) as live,
        LoadLoop(live.url, HOT_TEXTS, clients=4) as load,
    ):
        _wait_for(lambda: live.metric("marc_cache_requests_total", result="hit") > 50, 30, "warm cache hits")
        errors_before = live.metric("marc_cache_requests_total", result="error")
        sent_before_kill = len(load.snapshot())

        own_redis.kill()
        killed_at = time.monotonic()
        _wait_for(lambda: len(load.snapshot()) > sent_before_kill + 100, 30, "100 requests during the outage")
        errors_during = live.metric("marc_cache_requests_total", result="error") - errors_before
        ready_during = httpx.get(f"{live.url}/readyz", timeout=5)

        restarting_at = time.monotonic()  # start() returns once Redis answers: it is up before then
        own_redis.start()  # same port, empty
        restarted_at = time.monotonic()
        recovery = _seconds_until_more_hits(live, 20, "cache hits after the restart")
        load.stop()
        sent = load.snapshot()

    during = [s for s in sent if killed_at <= s.started < restarted_at]
    failures = [s for s in sent if s.status != 200]
    record(
        "redis_kill",
        requests_sent=len(sent),
        requests_during_outage=len(during),
        failed_requests=len(failures),
        cache_errors_counted=errors_during,
        outage_seconds=restarted_at - killed_at,
        recovery_seconds_to_hits=recovery,
    )
    assert failures == [], failures[:5]
    assert len(during) >= 100
    # Nothing from a dead cache: no request answered wholly inside the outage reports a cached item. (One
    # that ended after the restart began may have read the new Redis, which holds what was written since.)
    inside = [s for s in during if s.started > killed_at + 0.05 and s.finished < restarting_at]
    assert len(inside) >= 50
    assert [s for s in inside if any(s.cached)] == []
    assert errors_during > 0  # counted as marc_cache_requests_total{result="error"}
    assert ready_during.status_code == 200 and ready_during.json()["cache"]["status"] == "skipped"


@pytest.mark.slow
def test_paused_redis_costs_at_most_the_cache_timeout(tiny_artifact: Path) -> None:
    stall_seconds = 4.0
    with (
        RedisProcess() as own_redis,
        _server_on(own_redis, tiny_artifact) as live,
        # Client timeout well below the stall: a request that waited for Redis would fail here.
        LoadLoop(live.url, HOT_TEXTS, clients=4, timeout=stall_seconds / 2) as load,
    ):
        _wait_for(lambda: live.metric("marc_cache_requests_total", result="hit") > 50, 30, "warm hits")
        own_redis.pause()
        paused_at = time.monotonic()
        try:
            time.sleep(stall_seconds)
            errors_during = live.metric("marc_cache_requests_total", result="error")
            computed = live.metric("marc_items_embedded_total")
        finally:
            own_redis.resume()
        resumed_at = time.monotonic()
        recovery = _seconds_until_more_hits(live, 20, "cache hits after Redis resumed")
        load.stop()
        sent = load.snapshot()

    during = [s for s in sent if paused_at <= s.started and s.finished < resumed_at]
    slowest = max((s.finished - s.started for s in during), default=0.0)
    failures = [s for s in sent if s.status != 200]
    record(
        "redis_pause",
        cache_timeout_ms=CACHE_TIMEOUT_MS,
        pause_seconds=stall_seconds,
        requests_during_pause=len(during),
        failed_requests=len(failures),
        slowest_request_during_pause_ms=slowest * 1000,
        recovery_seconds_to_hits=recovery,
    )
    assert failures == [], failures[:5]  # none hit the client timeout (half the pause)
    assert len(during) >= 20  # requests kept completing while Redis hung
    assert all(not any(s.cached) for s in during)  # served by the model
    assert errors_during > 0 and computed > 0


def test_a_lookup_asks_again_when_a_redis_call_times_out(tiny_artifact: Path) -> None:
    """A lookup has no model to fall back on: a read that timed out (Redis slow, or the process starved
    of CPU, as in the soak on 2 loaded cores) is asked again instead of answering 503 at once."""
    with RedisProcess() as own_redis, _server_on(own_redis, tiny_artifact) as live, live.client() as client:
        stored = client.post("/v1/embed", json={"items": [{"id": "sku-1", "text": "linen shirt"}]})
        assert stored.status_code == 200
        lookup = {"ids": ["sku-1"]}
        # In Redis itself: a lookup in this process also sees its own queued write (read-your-writes), and
        # a write still on its way when Redis pauses below times out and is lost (as documented): waiting
        # on a lookup made this test see sku-1 "unknown" in 1 of ~13 loaded runs.
        _wait_for(lambda: own_redis.client.keys(f"*:{ID_KIND}:sku-1"), 10, "id key written to Redis")
        connections_before = own_redis.client.info("stats")["total_connections_received"]
        # Redis holds every command for 1.5 cache timeouts: the first read times out (its connection is
        # closed), the next one, on a new connection, is answered.
        own_redis.client.execute_command("CLIENT", "PAUSE", int(CACHE_TIMEOUT_MS * 1.5))
        answer = client.post("/v1/items/lookup", json=lookup)
        connections_after = own_redis.client.info("stats")["total_connections_received"]
    assert answer.status_code == 200, answer.text  # 503 without the retry
    assert connections_after > connections_before  # the timed-out read's connection was replaced
    assert answer.json()["unknown"] == [] and [item["id"] for item in answer.json()["data"]] == ["sku-1"]
