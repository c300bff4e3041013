"""Redis behaviour on real servers: fingerprints keep models apart, bad values are misses, an outage
never fails a request and the cache comes back by itself, Redis Cluster URLs work."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis

from service.cache.keys import KeySpace
from service.cache.stores import CacheUnavailable, RedisCache
from tests.support.redis_server import SHARED_REDIS_URL, RedisProcess, delete_prefix, unique_prefix
from tests.support.reference import onnx_reference
from tests.support.servers import LiveServer


@pytest.fixture
def prefix() -> Iterator[str]:
    value = unique_prefix()
    yield value
    delete_prefix(SHARED_REDIS_URL, value)


def _embed(live: LiveServer, *texts: str, ids: list[str] | None = None) -> dict:
    items = [{"text": t} | ({"id": ids[i]} if ids else {}) for i, t in enumerate(texts)]
    with live.client() as client:
        response = client.post("/v1/embed", json={"items": items})
    assert response.status_code == 200, response.text
    return response.json()


def test_another_fingerprint_never_reads_the_first_models_vectors(
    tiny_artifact: Path, tiny_artifact_other: Path, prefix: str
) -> None:
    text = "shared text of two different models"
    settings = {"redis_url": SHARED_REDIS_URL, "cache_prefix": prefix}
    with (
        LiveServer(artifact=tiny_artifact, **settings) as first,
        LiveServer(artifact=tiny_artifact_other, **settings) as second,
    ):
        a = _embed(first, text, ids=["item-1"])
        b = _embed(second, text)
        b_again = _embed(second, text)
        with second.client() as client:
            lookup = client.post("/v1/items/lookup", json={"ids": ["item-1"]}).json()
    assert a["fingerprint"] != b["fingerprint"]
    assert b["data"][0]["cached"] is False and b_again["data"][0]["cached"] is True
    np.testing.assert_allclose(
        b["data"][0]["embedding"], onnx_reference(tiny_artifact_other, [text])[0], atol=1e-5
    )
    assert not np.allclose(a["data"][0]["embedding"], b["data"][0]["embedding"])
    assert lookup["data"] == [] and lookup["unknown"] == ["item-1"]
    client = redis.Redis.from_url(SHARED_REDIS_URL)
    namespaces = {key.decode().split(":")[1] for key in client.scan_iter(f"{prefix}:*")}
    client.close()
    assert namespaces == {a["fingerprint"][:16], b["fingerprint"][:16]}


def test_a_value_of_the_wrong_length_is_a_miss_not_a_vector(tiny_artifact: Path, prefix: str) -> None:
    text = "a vector somebody overwrote"
    with LiveServer(artifact=tiny_artifact, redis_url=SHARED_REDIS_URL, cache_prefix=prefix) as live:
        fingerprint = _embed(live, "warm-up")["fingerprint"]
        client = redis.Redis.from_url(SHARED_REDIS_URL)
        client.set(KeySpace(prefix, fingerprint).text_key(text), b"\x00" * 10)
        client.close()
        body = _embed(live, text)
    assert body["data"][0]["cached"] is False
    np.testing.assert_allclose(
        body["data"][0]["embedding"], onnx_reference(tiny_artifact, [text])[0], atol=1e-5
    )


def test_float16_values_are_half_the_bytes_in_their_own_key_space(tiny_artifact: Path, prefix: str) -> None:
    text, other = "a float16 cached item: linen throw", "written as float32 under a float16 key"
    settings = {"redis_url": SHARED_REDIS_URL, "cache_prefix": prefix}
    with LiveServer(artifact=tiny_artifact, cache_dtype="float16", **settings) as half:
        first, second = _embed(half, text), _embed(half, text)
        fingerprint = first["fingerprint"]
        client = redis.Redis.from_url(SHARED_REDIS_URL)
        half_keys, full_keys = KeySpace(prefix, fingerprint, "float16"), KeySpace(prefix, fingerprint)
        stored = client.get(half_keys.text_key(text))
        reference = onnx_reference(tiny_artifact, [text, other])
        # float32 bytes plus a trailer: the length of no float16 value
        client.set(half_keys.text_key(other), reference[1].astype("<f4").tobytes() + bytes(4))
        wrong_length = _embed(half, other)
        with LiveServer(artifact=tiny_artifact, **settings) as full:
            from_float32_server = _embed(full, text)
        full_value = client.get(full_keys.text_key(text))
        client.close()
    dim = first["dim"]
    assert half_keys.text_key(text) != full_keys.text_key(text) and ":f16t:" in half_keys.text_key(text)
    # The vector, then the trailer: tokens the model embedded (uint16), flags (uint16).
    assert stored is not None and len(stored) == 2 * dim + 4
    assert full_value is not None and len(full_value) == 4 * dim + 4
    assert int.from_bytes(stored[2 * dim : 2 * dim + 2], "little") == first["data"][0]["tokens"] > 0
    served = np.array(first["data"][0]["embedding"], dtype=np.float32)
    # Served widened to float32; the miss is rounded too, so cached or not the answer is the same.
    assert first["data"][0]["cached"] is False and second["data"][0]["cached"] is True
    np.testing.assert_array_equal(np.array(second["data"][0]["embedding"], dtype=np.float32), served)
    np.testing.assert_array_equal(served.astype("<f2").astype(np.float32), served)  # float16 values
    np.testing.assert_array_equal(np.frombuffer(stored[: 2 * dim], "<f2").astype(np.float32), served)
    # Rounding error: half a float16 ulp (2^-11 relative), plus batch-padding noise of the reference.
    assert np.all(np.abs(served - reference[0]) <= 2**-11 * np.abs(reference[0]) + 1e-5)
    assert wrong_length["data"][0]["cached"] is False
    # The float32 server never reads the float16 entry: a miss, the exact vector.
    assert from_float32_server["data"][0]["cached"] is False
    np.testing.assert_allclose(from_float32_server["data"][0]["embedding"], reference[0], atol=1e-5)


def test_breaker_opens_on_refusal_or_repeated_timeouts_not_on_one_slow_call() -> None:
    async def scenario(redis_process: RedisProcess) -> dict[str, object]:
        cache = RedisCache(
            redis_process.url, ttl_seconds=60, timeout_seconds=0.1, retry_seconds=60, timeouts_to_open=3
        )
        seen: dict[str, object] = {}
        await cache.set_many([("k", b"v")])
        # One stall: several calls in flight time out together, then Redis answers again.
        redis_process.pause()
        stalled = await asyncio.gather(*(cache.get_many(["k"]) for _ in range(5)), return_exceptions=True)
        redis_process.resume()
        seen["stalled"] = [type(result).__name__ for result in stalled]
        seen["after_stall"] = (cache.status(), await cache.get_many(["k"]))
        # Sequential timeouts: the breaker opens after the third, then Redis is skipped.
        redis_process.pause()
        statuses = []
        for _ in range(3):
            with pytest.raises(CacheUnavailable, match="timed out"):
                await cache.get_many(["k"])
            statuses.append(cache.status())
        with pytest.raises(CacheUnavailable, match="skipped"):
            await cache.get_many(["k"])
        redis_process.resume()
        seen["sequential"] = statuses
        await cache.close()
        # A refused connection opens it at once.
        refused = RedisCache(
            redis_process.url, ttl_seconds=60, timeout_seconds=0.1, retry_seconds=60, timeouts_to_open=3
        )
        redis_process.stop()
        with pytest.raises(CacheUnavailable):
            await refused.get_many(["k"])
        seen["refused"] = refused.status()
        await refused.close()
        return seen

    with RedisProcess() as own_redis:
        seen = asyncio.run(scenario(own_redis))
    assert seen["stalled"] == ["CacheTimeout"] * 5  # a CacheUnavailable that says why
    assert seen["after_stall"] == ("ok", [b"v"])  # the stall did not open the breaker
    assert seen["sequential"] == ["ok", "ok", "skipped"]
    assert seen["refused"] == "skipped"


def test_after_the_skip_window_one_probe_asks_redis_not_the_crowd() -> None:
    async def scenario(redis_process: RedisProcess) -> dict[str, object]:
        cache = RedisCache(
            redis_process.url, ttl_seconds=60, timeout_seconds=1.0, retry_seconds=0.3, timeouts_to_open=3
        )
        seen: dict[str, object] = {}
        redis_process.stop()
        with pytest.raises(CacheUnavailable):
            await cache.get_many(["k"])  # refused: the breaker opens
        during = await asyncio.gather(*(cache.get_many(["k"]) for _ in range(20)), return_exceptions=True)
        seen["during"] = {type(result).__name__ for result in during}
        seen["status_open"] = cache.status()
        redis_process.start()  # same port
        stats = redis.Redis(port=redis_process.port)
        stats.config_resetstat()
        await asyncio.sleep(0.4)  # the skip window is over: the next call probes
        crowd = await asyncio.gather(*(cache.get_many(["k"]) for _ in range(50)), return_exceptions=True)
        seen["mget_calls"] = stats.info("commandstats").get("cmdstat_mget", {}).get("calls", 0)
        seen["crowd"] = sorted(type(result).__name__ for result in crowd)
        seen["status_after"] = cache.status()
        seen["next"] = await cache.get_many(["k"])
        stats.close()
        await cache.close()
        return seen

    with RedisProcess() as own_redis:
        seen = asyncio.run(scenario(own_redis))
    assert seen["during"] == {"CacheSkipped"} and seen["status_open"] == "skipped"
    assert seen["mget_calls"] == 1  # one probe reached Redis, not 50 requests
    assert seen["crowd"] == ["CacheSkipped"] * 49 + ["list"]
    assert seen["status_after"] == "ok" and seen["next"] == [None]


def test_after_a_restart_no_stale_pooled_connection_fails_a_later_call() -> None:
    """A restart closes every pooled connection. The first call that finds its connection lost drops the
    idle ones too, so once the probe finds Redis back, a burst of calls all succeed: none meets a dead
    connection, fails and opens the breaker again (lookups answered 503 seconds after a restart)."""

    async def scenario(redis_process: RedisProcess) -> dict[str, object]:
        cache = RedisCache(
            redis_process.url, ttl_seconds=60, timeout_seconds=1.0, retry_seconds=0.2, timeouts_to_open=3
        )
        await asyncio.gather(*(cache.get_many(["k"]) for _ in range(8)))  # 8 pooled connections
        redis_process.stop()
        redis_process.start()  # same port, empty
        seen: dict[str, object] = {}
        try:
            await cache.get_many(["k"])
        except CacheUnavailable as exc:
            seen["first"] = type(exc).__name__
        await asyncio.sleep(0.3)  # past the skip window
        seen["probe"] = await cache.get_many(["k"])  # one call probes, alone: Redis is back
        later = []
        for _ in range(3):  # bursts of as many calls as there were connections
            results = await asyncio.gather(*(cache.get_many(["k"]) for _ in range(8)), return_exceptions=True)
            later += [type(result).__name__ for result in results]
        seen["later"] = later
        seen["status"] = cache.status()
        await cache.close()
        return seen

    with RedisProcess() as own_redis:
        seen = asyncio.run(scenario(own_redis))
    assert seen["first"] == "CacheDisconnected" and seen["probe"] == [None]
    assert seen["later"] == ["list"] * 24 and seen["status"] == "ok"


@pytest.mark.slow
def test_redis_outage_is_served_from_the_model_and_the_cache_comes_back(tiny_artifact: Path) -> None:
    with (
        RedisProcess() as own_redis,
        LiveServer(
            artifact=tiny_artifact,
            redis_url=own_redis.url,
            cache_retry_seconds=0.2,
            cache_timeout_ms=250,
            # Redis's outage itself (the near-cache's: tests/service/cache/test_near_cache.py)
            near_cache_bytes=0,
        ) as live,
    ):
        assert _embed(live, "before the outage")["data"][0]["cached"] is False
        assert _embed(live, "before the outage")["data"][0]["cached"] is True

        own_redis.stop()
        errors_before = live.metric("marc_cache_requests_total", result="error")
        during = [_embed(live, "before the outage", "during the outage") for _ in range(5)]
        with live.client() as client:
            ready = client.get("/readyz")
        assert all(not item["cached"] for body in during for item in body["data"])
        assert live.metric("marc_cache_requests_total", result="error") > errors_before
        # Skipping is visible: readiness says so, the gauge is 1, skipped lookups are counted apart.
        assert ready.status_code == 200 and ready.json()["cache"]["status"] == "skipped"
        assert live.metric("marc_cache_skipped") == 1
        assert live.metric("marc_cache_requests_total", result="skipped") > 0

        own_redis.start()  # same port, empty: the service reconnects by itself
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if _embed(live, "after the outage")["data"][0]["cached"]:
                break
            time.sleep(0.1)
        else:
            pytest.fail("no cache hit within 15 s of Redis coming back")
        with live.client() as client:
            assert client.get("/readyz").json()["cache"]["status"] == "ok"
        assert live.metric("marc_cache_skipped") == 0


def test_redis_cluster_url(tiny_artifact: Path, tmp_path: Path) -> None:
    with RedisProcess(
        "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", cwd=tmp_path
    ) as node:
        client = redis.Redis(port=node.port)
        client.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
        deadline = time.monotonic() + 10
        while b"cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
            assert time.monotonic() < deadline, "single-node cluster did not come up"
            time.sleep(0.05)
        client.close()
        url = f"redis+cluster://127.0.0.1:{node.port}"
        with LiveServer(artifact=tiny_artifact, redis_url=url) as live:
            texts = [f"cluster item {i}" for i in range(6)]  # keys spread over many hash slots
            first = _embed(live, *texts, ids=[f"c{i}" for i in range(6)])
            second = _embed(live, *texts)
            with live.client() as http:
                found = http.post("/v1/items/lookup", json={"ids": ["c0", "c5"]}).json()
            errors = live.metric("marc_cache_requests_total", result="error")
    assert [d["cached"] for d in first["data"]] == [False] * 6
    assert [d["cached"] for d in second["data"]] == [True] * 6
    assert [d["id"] for d in found["data"]] == ["c0", "c5"]
    assert errors == 0
