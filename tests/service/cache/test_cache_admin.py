"""`marc cache stats` / `marc cache purge` on real Redis servers: counts over key spaces many SCAN
pages long, only one fingerprint's keys removed, SCAN and UNLINK only (never KEYS or DEL), a live
service keeps answering while a purge runs, and a 3-node Redis Cluster is walked on every node."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from service.cache.admin import cache_usage, connect, purge_fingerprint
from service.cache.keys import KeySpace
from tests.support.redis_server import RedisClusterProcesses, RedisProcess, unique_prefix
from tests.support.reference import served_fingerprint
from tests.support.servers import LiveServer

MARC = str(Path(sys.executable).parent / "marc")
OLD = "0123456789abcdef" + "0" * 48  # a retired model's fingerprint
NEW = "fedcba9876543210" + "1" * 48
VALUE = bytes(range(64))  # 16 float32 components


def fill(client: redis.Redis | redis.RedisCluster, keys: KeySpace, texts: int, ids: int = 0) -> None:
    pipe = client.pipeline(transaction=False)
    for i in range(texts):
        pipe.set(keys.text_key(f"catalogue text {i}"), VALUE)
    for i in range(ids):
        pipe.set(keys.id_key(f"sku-{i}"), VALUE)
    pipe.execute()


def command_calls(client: redis.Redis) -> dict[str, int]:
    """Calls per command since the server started (INFO commandstats)."""
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisProcess]:
    with RedisProcess(cwd=tmp_path) as process:
        yield process


@pytest.fixture
def filled(server: RedisProcess) -> Iterator[tuple[redis.Redis, str]]:
    """A private Redis holding two fingerprints (one in both value types), decoys and foreign keys.
    The prefix holds glob characters: an unescaped SCAN pattern would also match the decoy prefix."""
    client = redis.Redis.from_url(server.url)
    prefix = unique_prefix() + "*"
    fill(client, KeySpace(prefix, OLD), texts=2500, ids=500)
    fill(client, KeySpace(prefix, OLD, "float16"), texts=300)
    fill(client, KeySpace(prefix, NEW), texts=1200)
    fill(client, KeySpace(prefix.replace("*", "-decoy"), OLD), texts=50)  # another service's prefix
    client.set(f"{prefix}:not-a-vector-key", b"x")
    client.set(f"{prefix}:{OLD[:16]}:x:unknown-kind", b"x")
    # Vector keys of the layout before the token trailer (an older release's): seen and purged too.
    client.set(f"{prefix}:{OLD[:16]}:t:{'0' * 64}", VALUE)
    client.set(f"{prefix}:{OLD[:16]}:f16:t:{'1' * 64}", VALUE)
    yield client, prefix
    client.close()


def usage_rows(client: redis.Redis | redis.RedisCluster, prefix: str, **options: int) -> dict[str, tuple]:
    usage = cache_usage(client, prefix, **options)
    return {f"{r.fingerprint}/{r.value_dtype}": (r.texts, r.ids, r.bytes) for r in usage.fingerprints}


def test_stats_count_every_fingerprint_over_many_scan_pages(filled: tuple[redis.Redis, str]) -> None:
    client, prefix = filled
    before = command_calls(client)
    usage = cache_usage(client, prefix, page_keys=100)
    calls = {name: count - before.get(name, 0) for name, count in command_calls(client).items()}
    rows = {f"{r.fingerprint}/{r.value_dtype}": (r.texts, r.ids) for r in usage.fingerprints}
    assert rows == {
        f"{OLD[:16]}/float32": (2500, 500),
        f"{OLD[:16]}/float16": (300, 0),
        f"{OLD[:16]}/float32 (legacy)": (1, 0),
        f"{OLD[:16]}/float16 (legacy)": (1, 0),
        f"{NEW[:16]}/float32": (1200, 0),
    }
    assert (usage.other_keys, usage.nodes) == (2, 1)
    for row in usage.fingerprints:
        key_bytes = len(KeySpace(prefix, OLD).text_key("x"))
        assert row.keys * (len(VALUE) + key_bytes) <= row.bytes < row.keys * 400, row
    assert calls.get("keys", 0) == 0
    assert calls["scan"] > 4500 // 100  # many pages, not one big reply
    # The default page (1000 keys) sees the same: the key space is several pages long either way.
    assert usage_rows(client, prefix) == usage_rows(client, prefix, page_keys=100)


def test_purge_removes_one_fingerprint_in_unlink_batches(filled: tuple[redis.Redis, str]) -> None:
    client, prefix = filled
    before = command_calls(client)
    removed = purge_fingerprint(client, prefix, OLD, page_keys=250)
    calls = {name: count - before.get(name, 0) for name, count in command_calls(client).items()}
    assert removed == 2500 + 500 + 300 + 2
    assert calls["unlink"] >= 3302 // 250 and calls.get("del", 0) == 0 and calls.get("keys", 0) == 0
    usage = cache_usage(client, prefix)
    assert [(r.fingerprint, r.texts) for r in usage.fingerprints] == [(NEW[:16], 1200)]
    assert usage.other_keys == 2  # keys that are not vector keys are never touched
    assert len(list(client.scan_iter(f"{prefix.replace('*', '-decoy')}:*"))) == 50
    assert purge_fingerprint(client, prefix, OLD[:16]) == 0  # the short form works; nothing left


def test_purge_refuses_a_fingerprint_that_could_match_several_models(
    filled: tuple[redis.Redis, str],
) -> None:
    client, prefix = filled
    for bad in ("0123456789abcde", "", "0123456789abcdeg", "*" * 16):
        with pytest.raises(ValueError, match="fingerprint: expected at least 16 hex characters"):
            purge_fingerprint(client, prefix, bad)
    assert sum(r.keys for r in cache_usage(client, prefix).fingerprints) == 4502


def _served_load(
    live: LiveServer, texts: list[str], until: threading.Event
) -> list[tuple[int, float, bool, bool]]:
    """Requests in a loop until ``until`` is set: (status, seconds, all cached, sent before ``until``)."""
    results: list[tuple[int, float, bool, bool]] = []
    with live.client() as client:
        round_number = 0
        while not until.is_set() or round_number < 5:
            new_text = f"a text first seen during the purge, round {round_number}"
            items = [{"text": text} for text in [*texts, new_text]]
            during = not until.is_set()
            started = time.perf_counter()
            response = client.post("/v1/embed", json={"items": items})
            elapsed = time.perf_counter() - started
            cached = response.status_code == 200 and all(r["cached"] for r in response.json()["data"][:-1])
            results.append((response.status_code, elapsed, cached, during))
            round_number += 1
    return results


def test_live_service_keeps_serving_while_another_fingerprint_is_purged(
    server: RedisProcess, tiny_artifact: Path
) -> None:
    client = redis.Redis.from_url(server.url)
    prefix = unique_prefix()
    fill(client, KeySpace(prefix, OLD), texts=40_000, ids=20_000)
    served = served_fingerprint(tiny_artifact)
    texts = [f"live catalogue item {i}" for i in range(16)]
    with LiveServer(artifact=tiny_artifact, redis_url=server.url, cache_prefix=prefix) as live:
        with live.client() as http:
            assert http.post("/v1/embed", json={"items": [{"text": t} for t in texts]}).status_code == 200
        done = threading.Event()
        removed: list[int] = []
        purger = threading.Thread(
            target=lambda: (removed.append(purge_fingerprint(client, prefix, OLD, page_keys=500)), done.set())
        )
        purger.start()
        results = _served_load(live, texts, done)
        purger.join(60)
        errors = live.metric("marc_cache_requests_total", result="error")
    assert removed == [60_000]
    assert sum(during for *_, during in results) >= 5, "the purge ended before the load really began"
    assert [status for status, *_ in results] == [200] * len(results)
    assert all(cached for _, _, cached, _ in results), "the served fingerprint's vectors were touched"
    assert max(seconds for _, seconds, *_ in results) < 2.0  # a generous bound: Redis never blocked
    assert errors == 0
    rows = usage_rows(client, prefix)
    assert set(rows) == {f"{served[:16]}/float32"}
    assert rows[f"{served[:16]}/float32"][0] == len(texts) + len(results)
    client.close()


def test_purging_the_served_fingerprint_only_empties_its_cache(
    server: RedisProcess, tiny_artifact: Path
) -> None:
    prefix = unique_prefix()
    served = served_fingerprint(tiny_artifact)
    items = [{"text": f"item {i} of a catalogue"} for i in range(8)]
    # No near-cache: Redis is what is purged (a near-cache would keep serving the same vectors).
    live = LiveServer(artifact=tiny_artifact, redis_url=server.url, cache_prefix=prefix, near_cache_bytes=0)
    with live, live.client() as http:
        first = http.post("/v1/embed", json={"items": items}).json()
        client = redis.Redis.from_url(server.url)
        # The service writes to Redis after answering: on a busy machine the writes may land later.
        deadline = time.monotonic() + 30
        while len(list(client.scan_iter(f"{prefix}:*"))) < len(items) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert purge_fingerprint(client, prefix, served) == len(items)
        client.close()
        after = http.post("/v1/embed", json={"items": items}).json()
        again = http.post("/v1/embed", json={"items": items}).json()
    assert [r["cached"] for r in after["data"]] == [False] * len(items)  # recomputed, not an error
    assert [r["cached"] for r in again["data"]] == [True] * len(items)  # and stored again
    assert [r["embedding"] for r in after["data"]] == [r["embedding"] for r in first["data"]]


def test_stats_and_purge_walk_every_node_of_a_redis_cluster(tmp_path: Path) -> None:
    with RedisClusterProcesses(tmp_path, nodes=3) as cluster:
        client = connect(cluster.url)
        prefix = unique_prefix()
        fill(client, KeySpace(prefix, OLD), texts=3000, ids=300)
        fill(client, KeySpace(prefix, NEW, "float16"), texts=700)
        usage = cache_usage(client, prefix, page_keys=200)
        rows = {(r.fingerprint, r.value_dtype): (r.texts, r.ids) for r in usage.fingerprints}
        removed = purge_fingerprint(client, prefix, OLD, page_keys=200)
        per_node = []
        for node in cluster.nodes:
            node_client = redis.Redis(port=node.port)
            per_node.append(
                (len(list(node_client.scan_iter(f"{prefix}:{OLD[:16]}:*"))), node_client.dbsize())
            )
            node_client.close()
        after = {(r.fingerprint, r.value_dtype): r.texts for r in cache_usage(client, prefix).fingerprints}
        client.close()
    assert usage.nodes == 3
    assert rows == {(OLD[:16], "float32"): (3000, 300), (NEW[:16], "float16"): (700, 0)}
    assert removed == 3300
    assert [old for old, _ in per_node] == [0, 0, 0]
    assert all(size > 100 for _, size in per_node), per_node  # the keys really were spread out
    assert after == {(NEW[:16], "float16"): 700}


def _marc(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MARC_")} | (env or {})
    return subprocess.run([MARC, *args], capture_output=True, text=True, env=environment, timeout=60)


def test_cli_stats_and_purge(filled: tuple[redis.Redis, str], server: RedisProcess) -> None:
    _, prefix = filled
    env = {"MARC_REDIS_URL": server.url, "MARC_CACHE_PREFIX": prefix}
    table = _marc("cache", "stats", env=env)
    assert table.returncode == 0, table.stderr
    rows = [line.split() for line in table.stdout.splitlines()]
    assert [OLD[:16], "float32", "2500", "500", "3000"] in [row[:5] for row in rows]
    assert [OLD[:16], "float32", "(legacy)", "1", "0", "1"] in [row[:6] for row in rows]
    assert "4502 vector keys" in table.stdout and "2 other keys" in table.stdout

    purged = _marc("cache", "purge", "--fingerprint", OLD, "--page-keys", "300", env=env)
    assert purged.returncode == 0, purged.stderr
    assert f"removed 3302 keys of fingerprint {OLD[:16]}" in purged.stdout
    stats = _marc("cache", "stats", "--json", "--redis-url", server.url, "--cache-prefix", prefix)
    assert stats.returncode == 0, stats.stderr
    assert '"fingerprint": "fedcba9876543210"' in stats.stdout and OLD[:16] not in stats.stdout

    short = _marc("cache", "purge", "--fingerprint", "0123", env=env)
    assert short.returncode != 0 and "--fingerprint: expected at least 16 hex" in short.stderr
    missing = _marc("cache", "stats")
    assert missing.returncode != 0 and "give --redis-url or set MARC_REDIS_URL" in missing.stderr
    down = _marc("cache", "stats", "--redis-url", "redis://127.0.0.1:1/0")
    assert down.returncode != 0 and "redis redis://127.0.0.1:1/0" in down.stderr
    assert "Traceback" not in down.stderr
