"""Item ids on the hot path (service/cache/confirmed.py, the flow and the response memo), on a real
service in front of a private redis-server whose command counts tell what reached Redis: a repeat of
the README's request (one item with an id) costs no Redis round trip; the store keeps its byte bound
past it; a re-pointing in this process is seen at once, one by another process only after
MARC_CONFIRMED_IDS_SECONDS (the documented staleness rule), and then rewritten; after a Redis restart
(empty) the ids are written again as soon as a call finds the connection lost."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from service.cache.confirmed import ConfirmedIds, _entry_bytes
from service.settings import Settings
from tests.support.redis_server import RedisProcess
from tests.support.servers import LiveServer

DATA_COMMANDS = {f"cmdstat_{name}" for name in ("get", "mget", "set", "evalsha", "eval", "script|load")}
README_BODY = {"items": [{"id": "sku-1", "text": "Trail running shoe, waterproof, size 42"}]}
OTHER_TEXT = "Leather office chair, black"


@pytest.fixture
def redis_process() -> Iterator[RedisProcess]:
    with RedisProcess() as process:
        yield process


def _redis_calls(process: RedisProcess) -> int:
    """Reads and writes Redis has run so far (a connection's own handshake and health checks, and the
    test's INFO and DBSIZE, are not a request's round trips)."""
    stats = process.client.info("commandstats")
    return sum(int(entry["calls"]) for name, entry in stats.items() if name in DATA_COMMANDS)


def _calls_once_written(process: RedisProcess, keys: int) -> int:
    """The service's commands so far, once ``keys`` keys are in Redis (its queued writes flushed)."""
    process.wait_for_keys(keys)
    return _redis_calls(process)


def _lookup(client: httpx.Client, item_id: str) -> list[float]:
    answer = client.post("/v1/items/lookup", json={"ids": [item_id]}).json()
    return answer["data"][0]["embedding"]


def test_confirmations_keep_their_byte_bound_and_expire() -> None:
    per_entry = _entry_bytes("marc:f:f32t:i:sku-0000", ("t" * 80, 0.0))
    confirmed = ConfirmedIds(10 * per_entry, seconds=0.2)
    for i in range(30):  # 3x its bound
        confirmed.confirm(f"marc:f:f32t:i:sku-{i:04d}", "t" * 80)
    assert len(confirmed) == 10 and confirmed.bytes <= 10 * per_entry
    assert not confirmed.points_at("marc:f:f32t:i:sku-0000", "t" * 80)  # the least recently used went
    assert confirmed.points_at("marc:f:f32t:i:sku-0029", "t" * 80)
    assert not confirmed.points_at("marc:f:f32t:i:sku-0029", "u" * 80)  # another text
    time.sleep(0.25)
    assert not confirmed.points_at("marc:f:f32t:i:sku-0029", "t" * 80)  # expired


def test_the_readme_request_repeated_costs_no_redis_round_trip(
    tiny_artifact: object, redis_process: RedisProcess
) -> None:
    with LiveServer(artifact=tiny_artifact, redis_url=redis_process.url) as live, live.client() as client:
        first = client.post("/v1/embed", json=README_BODY)
        second = client.post("/v1/embed", json=README_BODY)  # all hits: kept by the memo
        before = _calls_once_written(redis_process, 2)  # the first request's text key and id key
        repeats = [client.post("/v1/embed", json=README_BODY) for _ in range(20)]
        # Another body with the same item (other key order): not the memo's, still no Redis call.
        text = README_BODY["items"][0]["text"]
        reordered = client.post("/v1/embed", json={"items": [{"text": text, "id": "sku-1"}]})
        after = _redis_calls(redis_process)
    assert first.json()["data"][0]["cached"] is False
    assert second.json()["data"][0]["cached"] is True
    assert all(r.status_code == 200 and r.content == second.content for r in repeats)
    assert reordered.status_code == 200 and reordered.json()["data"] == second.json()["data"]
    assert after == before


def test_a_re_pointed_id_is_rewritten_in_this_process_at_once_and_from_another_after_the_window(
    tiny_artifact: object, redis_process: RedisProcess
) -> None:
    window = 1.0
    other = {"items": [{"id": "sku-1", "text": OTHER_TEXT}]}
    with (
        LiveServer(artifact=tiny_artifact, redis_url=redis_process.url, confirmed_ids_seconds=window) as live,
        live.client() as client,
    ):
        readme = client.post("/v1/embed", json=README_BODY).json()["data"][0]["embedding"]
        client.post("/v1/embed", json=README_BODY)  # all hits: kept
        moved = client.post("/v1/embed", json=other).json()["data"][0]["embedding"]
        assert np.allclose(_lookup(client, "sku-1"), moved)  # re-pointed here: written
        back = client.post("/v1/embed", json=README_BODY)  # the kept answer is not enough now
        assert back.json()["data"][0]["cached"] is True
        time.sleep(0.1)
        assert np.allclose(_lookup(client, "sku-1"), readme)  # and pointed back

        # Another replica re-points sku-1 behind this process's back (writes the other text's value).
        id_key = next(key for key in redis_process.client.scan_iter("*:i:sku-1"))
        text_value = redis_process.client.get(
            next(
                key
                for key in redis_process.client.scan_iter("*:t:*")
                if redis_process.client.get(key) != redis_process.client.get(id_key)
            )
        )
        redis_process.client.set(id_key, text_value)
        client.post("/v1/embed", json=README_BODY)  # inside the window: trusted, not rewritten
        stale = redis_process.client.get(id_key) == text_value
        time.sleep(window + 0.1)
        client.post("/v1/embed", json=README_BODY)  # past it: read again, rewritten
        time.sleep(0.1)
        assert np.allclose(_lookup(client, "sku-1"), readme)
    assert stale  # the documented staleness: at most MARC_CONFIRMED_IDS_SECONDS


def test_after_a_redis_restart_ids_are_written_again_at_once_not_after_the_window(
    tiny_artifact: object, redis_process: RedisProcess
) -> None:
    """A restarted Redis is empty: confirmations of ids it held must not outlive it (with a window of
    5 minutes, a confirmed id would otherwise stay unknown to lookups for 5 minutes)."""
    with (
        LiveServer(
            artifact=tiny_artifact,
            redis_url=redis_process.url,
            confirmed_ids_seconds=300,
            cache_retry_seconds=0.2,
        ) as live,
        live.client() as client,
    ):
        readme = client.post("/v1/embed", json=README_BODY).json()["data"][0]["embedding"]
        client.post("/v1/embed", json=README_BODY)  # all hits: confirmed and kept by the memo
        _calls_once_written(redis_process, 2)
        redis_process.kill()
        redis_process.start()  # same port, empty
        # A request that reaches Redis (a new text) finds the pooled connection lost.
        assert client.post("/v1/embed", json={"items": [{"text": OTHER_TEXT}]}).status_code == 200
        time.sleep(0.3)  # past the breaker's retry: Redis is asked again
        repeat = client.post("/v1/embed", json=README_BODY)  # read again, not answered from the memo
        deadline = time.monotonic() + 10
        while not list(redis_process.client.scan_iter("*:i:sku-1")) and time.monotonic() < deadline:
            time.sleep(0.05)
        looked_up = _lookup(client, "sku-1")
    assert repeat.status_code == 200 and np.allclose(repeat.json()["data"][0]["embedding"], readme)
    assert np.allclose(looked_up, readme)


def test_confirmations_must_expire_before_the_cache_ttl() -> None:
    with pytest.raises(ValueError, match="MARC_CONFIRMED_IDS_SECONDS must be below"):
        Settings(artifact="x", cache_ttl_seconds=30, confirmed_ids_seconds=30)  # type: ignore[arg-type]
    assert Settings(artifact="x", cache_ttl_seconds=0, confirmed_ids_seconds=30)  # type: ignore[arg-type]


def test_with_confirmations_off_every_request_with_an_id_reads_redis(
    tiny_artifact: object, redis_process: RedisProcess
) -> None:
    with (
        LiveServer(artifact=tiny_artifact, redis_url=redis_process.url, confirmed_ids_seconds=0) as live,
        live.client() as client,
    ):
        client.post("/v1/embed", json=README_BODY)
        before = _calls_once_written(redis_process, 2)
        answers = [client.post("/v1/embed", json=README_BODY) for _ in range(5)]
        after = _redis_calls(redis_process)
        assert live.runtime.memo is not None and len(live.runtime.memo) == 0  # ids: never kept
    assert all(a.json()["data"][0]["cached"] for a in answers)
    assert after - before >= 5  # one read of the id key per request
