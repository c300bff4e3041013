"""A new model without a cold start, as docs/operations.md runs it, on real processes and a real Redis:
the old artifact serves (`marc serve`); the new artifact's catalogue is precomputed into the same Redis
by three `marc precompute --shard i/3` processes (the Indexed Job of deploy/k8s/precompute) while the
old one serves; a replica on the new artifact starts, becomes ready, and the old one is stopped with
SIGTERM (a rolling update with maxSurge 1, maxUnavailable 0); then `marc cache purge` removes the old
fingerprint's keys.

Checked: readiness never drops (some replica answers /readyz 200 at every probe) and no request fails;
the new replica's first requests for catalogue items are all cache hits with zero model runs; it never
serves an old vector; the purge removes the old keys and nothing else."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from loadtest.processes import environment_without_settings
from service.cache.keys import KeySpace, parse_key
from service.cache.values import ValueCodec
from tests.support.load import LoadLoop
from tests.support.precompute import marc_command, run_shards, write_items
from tests.support.redis_server import RedisProcess
from tests.support.reference import onnx_reference, served_fingerprint
from tests.support.servers import ServeProcess

ITEMS = [
    (f"item-{i:05d}", f"{('oak', 'steel', 'wool')[i % 3]} {('chair', 'mug', 'rug', 'bag')[i % 4]} {i}")
    for i in range(240)
]
SHARDS = 3


class ReadinessProbe:
    """/readyz of every replica every 50 ms, as a kubelet probes them, and the routing a Service does
    with it: ``routes[url]`` is set while the replica is ready (LoadLoop sends only then). ``samples``
    are (seconds, {url: status, None = no answer})."""

    def __init__(self) -> None:
        self.routes: dict[str, threading.Event] = {}
        self.samples: list[tuple[float, dict[str, int | None]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def add(self, url: str) -> threading.Event:
        self.routes[url] = threading.Event()
        return self.routes[url]

    def __enter__(self) -> ReadinessProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        with httpx.Client(timeout=3) as client:
            while not self._stop.is_set():
                statuses: dict[str, int | None] = {}
                for url, route in list(self.routes.items()):
                    try:
                        statuses[url] = client.get(f"{url}/readyz").status_code
                    except httpx.TransportError:
                        statuses[url] = None
                    route.set() if statuses[url] == 200 else route.clear()
                self.samples.append((time.monotonic(), statuses))
                time.sleep(0.05)

    def gaps(self) -> list[tuple[float, dict[str, int | None]]]:
        """Samples in which no replica was ready."""
        return [(t, s) for t, s in self.samples if 200 not in s.values()]


@pytest.fixture
def redis_server() -> Iterator[RedisProcess]:
    with RedisProcess() as server:
        yield server  # type: ignore[misc]


def _purge(redis_url: str, fingerprint: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        marc_command("cache", "purge", "--fingerprint", fingerprint, "--redis-url", redis_url),
        capture_output=True,
        text=True,
        env=environment_without_settings(),
        timeout=120,
        check=False,
    )


def _keys_per_fingerprint(redis_server: RedisProcess) -> dict[str, int]:
    counts: dict[str, int] = {}
    for key in redis_server.client.scan_iter(count=1000):
        parts = parse_key("marc", key.decode())
        assert parts is not None, f"a key of no known layout: {key!r}"
        counts[parts.fingerprint] = counts.get(parts.fingerprint, 0) + 1
    return counts


@pytest.mark.slow
def test_rollout_with_a_warm_cache(
    tiny_artifact: Path, tiny_artifact_other: Path, tmp_path: Path, redis_server: RedisProcess
) -> None:
    old_artifact, new_artifact = tiny_artifact, tiny_artifact_other
    old_fp, new_fp = served_fingerprint(old_artifact), served_fingerprint(new_artifact)
    assert old_fp[:16] != new_fp[:16]
    items_file = write_items(tmp_path / "items.jsonl", ITEMS)
    texts = [text for _, text in ITEMS]

    def shard_args(artifact: Path) -> list[str]:
        return ["--artifact", str(artifact), "--items", str(items_file), "--redis-url", redis_server.url]

    # The old model serves, its catalogue cached (the Job ran for it when it was rolled out).
    assert all(run.returncode == 0 for run in run_shards(SHARDS, shard_args(old_artifact)))
    serving = {"redis_url": redis_server.url, "drain_seconds": 1}
    old = ServeProcess(tmp_path / "old.log", artifact=old_artifact, **serving).start()
    new: ServeProcess | None = None
    try:
        assert httpx.get(f"{old.url}/readyz").json()["fingerprint"] == old_fp
        with ReadinessProbe() as probe:
            old_route = probe.add(old.url)
            assert old_route.wait(10)
            with LoadLoop(old.url, texts, clients=2, routing=old_route) as load:
                # 1. The new artifact's catalogue into the same Redis, while the old model serves.
                precomputed = run_shards(SHARDS, shard_args(new_artifact))
                during_precompute = list(probe.samples)
                sent_during_precompute = len(load.snapshot())
                # 2. The rolling update: a new replica comes up and gets ready, then the old one drains
                # (SIGTERM: /readyz 503 at once, the Service stops routing to it, in-flight requests end).
                new = ServeProcess(tmp_path / "new.log", artifact=new_artifact, **serving)
                new_route = probe.add(new.url)
                with LoadLoop(new.url, texts, clients=1, routing=new_route) as load_new:
                    new.start()
                    assert new_route.wait(10)
                    old.stop(grace_seconds=15)
                    old_exit = old.process.returncode if old.process else None
                    time.sleep(0.3)
        for run in precomputed:
            assert run.returncode == 0, run.stderr
        assert sum(run.counts()["computed"] for run in precomputed) == len(ITEMS)

        # Readiness never dropped: the old replica stayed ready during the precompute, and some replica
        # was ready at every probe of the switch.
        assert len(during_precompute) > 10 and all(s[old.url] == 200 for _, s in during_precompute)
        assert probe.gaps() == [], probe.gaps()[:5]
        assert any(s.get(new.url) == 200 and s.get(old.url) == 503 for _, s in probe.samples)  # the drain
        assert old_exit in (0, -15), old.log()[-2000:]
        assert sent_during_precompute > 0 and load.failures() == [], load.failures()[:5]
        assert load_new.snapshot() and load_new.failures() == [], load_new.failures()[:5]

        # 3. The first requests on the new model: all cache hits, no model run, the new model's vectors.
        with httpx.Client(base_url=new.url, timeout=30) as client:
            first_hits = 0
            served = []
            for start in range(0, len(ITEMS), 60):
                batch = [{"id": item_id, "text": text} for item_id, text in ITEMS[start : start + 60]]
                answer = client.post("/v1/embed", json={"items": batch})
                assert answer.status_code == 200, answer.text
                assert answer.json()["fingerprint"] == new_fp
                first_hits += int(answer.headers["x-cache-hits"])
                served += [row["embedding"] for row in answer.json()["data"]]
                assert all(row["cached"] for row in answer.json()["data"])
            looked_up = client.post("/v1/items/lookup", json={"ids": [i for i, _ in ITEMS]}).json()
        assert first_hits == len(ITEMS) and looked_up["unknown"] == []
        assert new.metric("marc_items_embedded_total") == 0
        assert new.metric("marc_cache_requests_total", result="miss") == 0
        served_vectors = np.array(served, dtype=np.float32)
        codec = ValueCodec("float32", served_vectors.shape[1])
        stored = {
            fp: codec.decode(
                redis_server.client.mget([KeySpace("marc", fp).id_key(i) for i, _ in ITEMS])
            ).vectors
            for fp in (old_fp, new_fp)
        }
        np.testing.assert_array_equal(served_vectors, stored[new_fp])  # exactly what the Job stored
        np.testing.assert_allclose(served_vectors, onnx_reference(new_artifact, texts), rtol=0, atol=1e-5)
        # Not one old vector: every row is far from the old model's vector for the same item.
        assert np.abs(served_vectors - stored[old_fp]).max(axis=1).min() > 1e-3

        # 4. Housekeeping: the old fingerprint's keys go, the new ones stay and still serve.
        before = _keys_per_fingerprint(redis_server)
        assert before[old_fp[:16]] >= 2 * len(ITEMS) and before[new_fp[:16]] == 2 * len(ITEMS)
        purged = _purge(redis_server.url, old_fp)
        assert purged.returncode == 0, purged.stderr
        assert f"removed {before[old_fp[:16]]} keys of fingerprint {old_fp[:16]}" in purged.stdout
        assert _keys_per_fingerprint(redis_server) == {new_fp[:16]: 2 * len(ITEMS)}
        with httpx.Client(base_url=new.url, timeout=30) as client:
            again = client.post("/v1/embed", json={"items": [{"text": t} for t in texts[:50]]})
        assert again.headers["x-cache-hits"] == "50" and new.metric("marc_items_embedded_total") == 0
    finally:
        old.stop(grace_seconds=0)
        if new is not None:
            new.stop(grace_seconds=0)
