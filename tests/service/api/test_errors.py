"""Errors against a live server: no internals in error bodies (they go to the log), clients that hang
up counted as 499 and not as server errors, and MARC_PROTECT_METRICS_AND_DOCS putting /metrics and
the docs behind the API key while the probes stay open."""

from __future__ import annotations

import logging
import socket
import time
from pathlib import Path

import pytest

from service.api.errors import as_api_error
from service.model.batcher import InferenceFailed
from tests.support.redis_server import RedisProcess
from tests.support.servers import LiveServer


def test_a_redis_outage_answers_a_generic_message_and_logs_the_details(
    tiny_artifact: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        RedisProcess() as own_redis,
        LiveServer(artifact=tiny_artifact, redis_url=own_redis.url, cache_retry_seconds=60) as live,
    ):
        own_redis.stop()
        with caplog.at_level(logging.WARNING), live.client() as client:
            lookup = client.post("/v1/items/lookup", json={"ids": ["sku-1"]})
    error = lookup.json()["error"]
    assert lookup.status_code == 503 and error["code"] == "cache_unavailable"
    assert error["message"] == "the cache is unavailable; retry later"
    assert "ConnectionError" not in lookup.text and str(own_redis.port) not in lookup.text
    logged = [r.getMessage() for r in caplog.records if r.name == "service.api.errors"]
    assert any("ConnectionError" in message for message in logged), logged  # the details are logged


def test_inference_failures_and_surprises_say_nothing_internal() -> None:
    failed = as_api_error(InferenceFailed("inference failed: RuntimeException at /path/model.onnx"))
    surprise = as_api_error(KeyError("secret-internal-key"))
    assert failed.status == 500 and "/path" not in failed.message and failed.code == "inference_failed"
    assert surprise.status == 500 and "secret" not in surprise.message


def _send_and_hang_up(port: int, head_only: bool) -> None:
    body = b'{"items": [{"text": "a client that does not wait for its answer"}]}'
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(
            b"POST /v1/embed HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + (body[:10] if head_only else body)
        )
        time.sleep(0.3)


def test_clients_that_hang_up_are_recorded_as_499_not_500(tiny_artifact: Path) -> None:
    # A long batch window: the second client is still waiting for the model when it leaves.
    with LiveServer(artifact=tiny_artifact, max_wait_ms=1500) as live:
        _send_and_hang_up(live.port, head_only=True)  # gone while its body arrives
        _send_and_hang_up(live.port, head_only=False)  # gone while its item waits for the model
        deadline = time.monotonic() + 10
        while live.metric("marc_request_duration_seconds_count", route="/v1/embed") < 2:
            assert time.monotonic() < deadline, "the hang-ups were not recorded"
            time.sleep(0.05)
        gone = live.metric("marc_request_duration_seconds_count", route="/v1/embed", status="499")
        failed = live.metric("marc_request_duration_seconds_count", route="/v1/embed", status="500")
    assert gone == 2 and failed == 0


def test_metrics_and_docs_behind_the_key_on_request(tiny_artifact: Path) -> None:
    key = {"authorization": "Bearer ops-key-2c9f"}
    paths = ("/metrics", "/docs", "/redoc", "/openapi.json")
    with (
        LiveServer(artifact=tiny_artifact, api_key="ops-key-2c9f", protect_metrics_and_docs=True) as live,
        live.client() as client,
    ):
        without = {path: client.get(path).status_code for path in paths}
        with_key = {path: client.get(path, headers=key).status_code for path in paths}
        probes = [client.get(path).status_code for path in ("/healthz", "/readyz")]
        spec = client.get("/openapi.json", headers=key).json()
    assert without == dict.fromkeys(paths, 401)
    assert with_key == dict.fromkeys(paths, 200)
    assert probes == [200, 200]
    assert "/v1/embed" in spec["paths"] and "/openapi.json" not in spec["paths"]
