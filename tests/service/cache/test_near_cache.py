"""The near-cache (service/cache/near.py): its byte bound under eviction, and the service with a
near-cache far smaller than its working set in front of a real Redis - every answer still equal to
the model's, hits counted per tier."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from service.cache.keys import KeySpace
from service.cache.near import NearCache, entry_bytes
from tests.support.redis_server import SHARED_REDIS_URL, RedisProcess, delete_prefix, unique_prefix
from tests.support.reference import onnx_reference
from tests.support.servers import LiveServer

VALUE = bytes(68)  # a k=16 float32 vector and its 4-byte trailer


def _key(i: int) -> str:
    return f"marc:0123456789abcdef:f32t:t:{i:064x}"


def test_eviction_keeps_the_byte_bound_and_drops_the_least_recently_used() -> None:
    per_entry = entry_bytes(_key(0), VALUE)
    near = NearCache(10 * per_entry)
    for i in range(10):
        near.put(_key(i), VALUE)
    assert len(near) == 10 and near.bytes == 10 * per_entry
    assert near.get(_key(0)) == VALUE  # now the most recently used
    for i in range(10, 25):  # 15 more than fit
        near.put(_key(i), VALUE)
        assert near.bytes <= near.max_bytes
    assert len(near) == 10 and near.bytes == 10 * per_entry
    assert _key(0) not in near  # it was used once, then 15 newer entries came
    assert [i for i in range(25) if _key(i) in near] == list(range(15, 25))
    near.put(_key(24), VALUE)  # putting a key again does not count it twice
    assert near.bytes == 10 * per_entry


def test_an_entry_larger_than_the_bound_is_not_kept() -> None:
    near = NearCache(entry_bytes(_key(0), VALUE))
    near.put(_key(0), VALUE)
    near.put(_key(1), VALUE * 2)
    assert _key(1) not in near and near.get(_key(0)) == VALUE
    with pytest.raises(ValueError, match="max_bytes"):
        NearCache(0)


@pytest.fixture
def prefix() -> Iterator[str]:
    value = unique_prefix()
    yield value
    delete_prefix(SHARED_REDIS_URL, value)


def _tier_counts(live: LiveServer) -> dict[tuple[str, str], float]:
    return {
        (labels["tier"], labels["result"]): value
        for labels, value in live.metrics()["marc_cache_requests_total"]
    }


def test_service_past_the_near_cache_bound_serves_the_models_vectors(
    tiny_artifact: Path, prefix: str
) -> None:
    texts = [f"near-cache item number {i}: a walnut side table" for i in range(40)]
    expected = onnx_reference(tiny_artifact, texts)
    # Room for about 8 of the 40 texts: most repeats come from Redis, the last few from the near-cache.
    bound = 8 * entry_bytes(KeySpace(prefix, "0" * 64).text_key("x"), VALUE) + 50  # same-length keys
    with LiveServer(
        artifact=tiny_artifact, redis_url=SHARED_REDIS_URL, cache_prefix=prefix, near_cache_bytes=bound
    ) as live:
        near = live.runtime.models.default.flow.near
        assert near is not None and near.max_bytes == bound
        with live.client() as client:
            first = [client.post("/v1/embed", json={"items": [{"text": t}]}).json() for t in texts]
            before = _tier_counts(live)
            again = [
                client.post("/v1/embeddings", json={"input": [t], "encoding_format": "float"}).json()
                for t in texts
            ]
            recent = [client.post("/v1/embed", json={"items": [{"text": t}]}).json() for t in texts[-4:]]
            after = _tier_counts(live)
            gauge = {
                labels["cache"]: value for labels, value in live.metrics()["marc_in_process_cache_bytes"]
            }
        assert near.bytes <= bound and len(near) == 8
        assert gauge["near"] == near.bytes  # what operators see is what the store holds, at its bound
    assert [body["data"][0]["cached"] for body in first] == [False] * 40
    np.testing.assert_allclose([body["data"][0]["embedding"] for body in first], expected, atol=1e-5)
    # Served from either tier, the vectors are the model's (and the same bytes as the first answers).
    assert [body["data"][0]["embedding"] for body in again] == [
        body["data"][0]["embedding"] for body in first
    ]
    assert [body["data"][0]["cached"] for body in recent] == [True] * 4
    near_hits = after[("near", "hit")] - before[("near", "hit")]
    redis_hits = after[("redis", "hit")] - before[("redis", "hit")]
    assert redis_hits >= 30  # evicted long ago: the repeats went to Redis
    assert near_hits >= 4  # the last texts were still near
    assert near_hits + redis_hits == 44  # every lookup counted once, under the tier that answered it
    assert after[("redis", "miss")] == before[("redis", "miss")]


def test_near_hits_are_served_while_redis_is_down(tiny_artifact: Path) -> None:
    warm, cold = "a near-cached text: oak desk", "a text first seen while Redis is down"
    with (
        RedisProcess() as own_redis,
        LiveServer(artifact=tiny_artifact, redis_url=own_redis.url, cache_retry_seconds=60) as live,
        live.client() as client,
    ):
        first = client.post("/v1/embed", json={"items": [{"text": warm}]}).json()
        # Its write reached Redis first: a flush failing on the stopped server would open the breaker,
        # and the read below would be skipped rather than fail.
        own_redis.wait_for_keys(1)
        own_redis.stop()
        during = client.post("/v1/embed", json={"items": [{"text": warm}, {"text": cold}]}).json()
        counts = _tier_counts(live)
    assert [d["cached"] for d in during["data"]] == [True, False]
    assert during["data"][0]["embedding"] == first["data"][0]["embedding"]
    np.testing.assert_allclose(
        during["data"][1]["embedding"], onnx_reference(tiny_artifact, [cold])[0], atol=1e-5
    )
    assert counts[("near", "hit")] == 1 and counts[("redis", "error")] == 1
