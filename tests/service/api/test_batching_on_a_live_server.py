"""Micro-batching against a real server: concurrent requests share ONNX runs, identical texts in
flight run once, a full queue answers 503 + Retry-After, work for departed clients is dropped."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import httpx
import numpy as np

from tests.support.reference import onnx_reference
from tests.support.servers import LiveServer


async def _post_concurrently(url: str, bodies: list[dict]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(bodies))
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        return await asyncio.gather(*(client.post("/v1/embed", json=body) for body in bodies))


def test_concurrent_single_item_requests_share_onnx_runs(tiny_artifact: Path) -> None:
    texts = [
        f"item number {i} made of {('steel', 'cotton', 'leather')[i % 3]} " * (1 + i % 4) for i in range(32)
    ]
    texts = [t.strip() for t in texts]
    with LiveServer(artifact=tiny_artifact, max_wait_ms=100, max_batch_size=32) as live:
        responses = asyncio.run(_post_concurrently(live.url, [{"items": [{"text": t}]} for t in texts]))
        runs = live.metric("marc_batch_size_count")
        batched_items = live.metric("marc_batch_size_sum")
        embedded = live.metric("marc_items_embedded_total")
    assert [r.status_code for r in responses] == [200] * 32
    assert embedded == batched_items == 32
    assert runs < 32, f"{runs} ONNX runs for 32 requests: no batching happened"
    # Length-sorted runs with their own padding still give each text its own vector.
    got = np.array([r.json()["data"][0]["embedding"] for r in responses])
    np.testing.assert_allclose(got, onnx_reference(tiny_artifact, texts), atol=1e-5)


def test_identical_texts_in_flight_run_the_model_once(tiny_artifact: Path) -> None:
    body = {"items": [{"text": "the one popular item everybody asks for"}]}
    with LiveServer(artifact=tiny_artifact, max_wait_ms=200) as live:
        responses = asyncio.run(_post_concurrently(live.url, [body] * 16))
        embedded = live.metric("marc_items_embedded_total")
        shared = live.metric("marc_items_deduplicated_total")
        hits = live.metric("marc_cache_requests_total", result="hit")
    assert [r.status_code for r in responses] == [200] * 16
    assert embedded == 1
    assert shared + hits == 15  # every other request joined the running job or found the cache
    vectors = {tuple(r.json()["data"][0]["embedding"]) for r in responses}
    assert len(vectors) == 1


def test_full_queue_answers_503_with_retry_after_at_once(tiny_artifact: Path) -> None:
    items = [{"text": f"distinct text {i}"} for i in range(5)]
    with LiveServer(artifact=tiny_artifact, max_queue_items=4, max_items_per_request=16) as live:
        with live.client() as client:
            refused = client.post("/v1/embed", json={"items": items})
            accepted = client.post("/v1/embed", json={"items": items[:4]})
        rejections = live.metric("marc_overload_rejections_total")
        embedded = live.metric("marc_items_embedded_total")
        depth = live.metric("marc_queue_depth")
    assert refused.status_code == 503
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["type"] == "overloaded"
    assert accepted.status_code == 200
    assert rejections == 1 and embedded == 4  # nothing of the refused request was queued
    assert depth == 0


def test_work_of_a_departed_client_is_dropped_before_the_model(tiny_artifact: Path) -> None:
    body = b'{"items": [{"text": "nobody will read this answer"}]}'
    request = (
        b"POST /v1/embed HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    # A long batch window keeps the item waiting while the client leaves.
    with LiveServer(artifact=tiny_artifact, max_wait_ms=800) as live:
        with socket.create_connection(("127.0.0.1", live.port)) as sock:
            sock.sendall(request)
            time.sleep(0.3)
        deadline = time.monotonic() + 10
        while live.metric("marc_items_dropped_total") < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        dropped = live.metric("marc_items_dropped_total")
        embedded = live.metric("marc_items_embedded_total")
        depth = live.metric("marc_queue_depth")
        with live.client() as client:
            after = client.post("/v1/embed", content=body, headers={"content-type": "application/json"})
    assert dropped == 1 and embedded == 0 and depth == 0
    assert after.status_code == 200 and after.json()["data"][0]["cached"] is False
