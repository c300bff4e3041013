"""`marc serve --workers 2` (service/workers.py): two processes on one port with one Redis, and a
/metrics that counts for both (prometheus-client multiprocess mode), whichever worker answers it."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import httpx
import pytest
from prometheus_client.multiprocess import MultiProcessCollector

from tests.support.load import post_all
from tests.support.redis_server import SHARED_REDIS_URL, delete_prefix, unique_prefix
from tests.support.servers import ServeProcess, scrape_metrics, sum_samples

TEXTS = [f"two-worker catalogue item {i}: a ceramic mug" for i in range(20)]
REQUESTS = 240


def _embed_requests_per_worker(metrics_dir: Path) -> dict[str, float]:
    """Requests to /v1/embed each worker process recorded, from its own metric file."""
    counts = {}
    for path in metrics_dir.glob("histogram_*.db"):
        pid = path.stem.split("_")[-1]
        for family in MultiProcessCollector.merge([str(path)], accumulate=True):
            for sample in family.samples:
                if (
                    sample.name == "marc_request_duration_seconds_count"
                    and sample.labels["route"] == "/v1/embed"
                ):
                    counts[pid] = counts.get(pid, 0) + sample.value
    return counts


async def _spread(url: str) -> list[int]:
    """REQUESTS single-text requests, each on a new connection (so the kernel hands them to both
    workers); their x-cache-hits."""
    hits = []

    async def one(i: int) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            response = await client.post("/v1/embed", json={"items": [{"text": TEXTS[i % len(TEXTS)]}]})
        assert response.status_code == 200, response.text
        hits.append(int(response.headers["x-cache-hits"]))

    gate = asyncio.Semaphore(16)

    async def gated(i: int) -> None:
        async with gate:
            await one(i)

    await asyncio.gather(*(gated(i) for i in range(REQUESTS)))
    return hits


@pytest.mark.slow
def test_two_workers_share_the_port_redis_and_their_metrics(
    tiny_artifact: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    metrics_dir = tmp_path / "metrics"
    (metrics_dir).mkdir()
    (metrics_dir / "counter_999999.db").write_bytes(b"left over from a previous run")  # must be cleared
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(metrics_dir))
    prefix = unique_prefix()
    server = ServeProcess(
        tmp_path / "serve.log",
        artifact=tiny_artifact,
        redis_url=SHARED_REDIS_URL,
        cache_prefix=prefix,
        workers=2,
    )
    try:
        with server:
            warm = asyncio.run(
                post_all(server.url, "/v1/embed", [{"items": [{"text": t} for t in TEXTS]}], concurrency=1)
            )
            assert warm.statuses == {200: 1}
            hits = asyncio.run(_spread(server.url))
            per_worker = _embed_requests_per_worker(metrics_dir)
            scrapes = [scrape_metrics(server.url) for _ in range(6)]  # answered by either worker
            server.signal(signal.SIGTERM)
            exit_status = server.wait_exit(60)
    finally:
        delete_prefix(SHARED_REDIS_URL, prefix)

    cache = [(labels, value) for labels, value in scrapes[0]["marc_cache_requests_total"] if value]
    assert hits == [1] * REQUESTS, cache  # every text computed once, by one worker, shared via Redis
    assert len(per_worker) == 2 and min(per_worker.values()) > 0, per_worker  # both workers served
    assert sum(per_worker.values()) == REQUESTS + 1
    for samples in scrapes:
        # Whichever worker answered, the counts are the sums over both processes.
        assert sum_samples(samples, "marc_request_duration_seconds_count", route="/v1/embed") == REQUESTS + 1
        assert sum_samples(samples, "marc_items_embedded_total") == len(TEXTS)
        assert sum_samples(samples, "marc_cache_requests_total", result="hit") == REQUESTS
        assert sum_samples(samples, "marc_cache_requests_total", result="miss") == len(TEXTS)
        # The worker that did not warm the cache found the texts in the shared Redis.
        assert sum_samples(samples, "marc_cache_requests_total", tier="redis", result="hit") >= 1
        assert [value for _, value in samples["marc_model_info"]] == [1.0]  # one series, not one per worker
        assert sum_samples(samples, "marc_queue_depth") == 0
        near = [
            (labels["pid"], value)
            for labels, value in samples["marc_in_process_cache_bytes"]
            if labels["cache"] == "near"
        ]
        assert len({pid for pid, _ in near}) == 2, near  # each worker's own near-cache, not a sum
        assert sum(value for _, value in near) > 0, near  # the texts computed are held near
    assert exit_status == 0
    assert not (metrics_dir / "counter_999999.db").exists()
