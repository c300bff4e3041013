"""Big, slow and too many requests against a `marc serve` process with its default limits: maximal
hostile bodies in parallel do not freeze the event loop (/healthz keeps answering within 100 ms, the
Kubernetes liveness timeout is 1 s), a slow upload is cut off after the body-read timeout, and past
the concurrency limit requests are refused at once while the probes still answer."""

from __future__ import annotations

import json
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import orjson

from service.settings import Settings
from tests.support.reliability_report import record
from tests.support.servers import ServeProcess

LIMITS = Settings(artifact=Path("unused"))  # the defaults the served process runs with
BODY_LIMIT = LIMITS.body_limit_bytes
LIVENESS_MS = 100.0


def _fill(prefix: bytes, element: bytes, suffix: bytes) -> bytes:
    """``prefix`` + as many comma-separated ``element`` as fit the body limit + ``suffix``."""
    count = (BODY_LIMIT - len(prefix) - len(suffix)) // (len(element) + 1)
    return prefix + b",".join([element] * count) + suffix


HOSTILE = {
    # path: body at the body limit, each the cheapest-to-send, costliest-to-parse shape we know
    "tiny items": ("/v1/embed", _fill(b'{"items": [', b'{"text":"a"}', b"]}")),
    "tiny inputs": ("/v1/embeddings", _fill(b'{"input": [', b'"a"', b"]}")),
    "integer ids": ("/v1/items/lookup", _fill(b'{"ids": [', b"1", b"]}")),
    "nested token arrays": ("/v1/embeddings", _fill(b'{"input": [', b"[1]", b"]}")),
    "one huge text": ("/v1/embed", b'{"items": [{"text": "' + b"z" * (BODY_LIMIT - 40) + b'"}]}'),
    "escaped quotes": ("/v1/embed", b'{"items": [{"text": "' + b'\\"' * ((BODY_LIMIT - 40) // 2) + b'"}]}'),
}
EXPECTED_CODES = {"too_many_items", "body_too_complex", "text_too_long"}


# The prober runs in a process of its own: threads of the test sending megabytes must not delay it.
PROBE = """
import json, sys, time, httpx
latencies, failures = [], 0
with httpx.Client(base_url=sys.argv[1], timeout=5) as client:
    client.get("/healthz")  # connect first: the probes time the server, not the TCP handshake
    end = time.monotonic() + float(sys.argv[2])
    while time.monotonic() < end:
        started = time.perf_counter()
        try:
            failures += client.get("/healthz").status_code != 200
        except httpx.TransportError:
            failures += 1
        latencies.append((time.perf_counter() - started) * 1000)
        time.sleep(0.01)
print(json.dumps({"latencies_ms": latencies, "failures": failures}))
"""


def _post_raw(port: int, path: str, body: bytes) -> Callable[[], tuple[int, bytes]]:
    """A request sent with one sendall (no client-side work per byte); its status and body."""

    def send() -> tuple[int, bytes]:
        with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
            sock.sendall(
                f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            return _read_status(sock)

    return send


def _in_parallel(calls: list[Callable[[], tuple[int, bytes]]]) -> list[tuple[int, bytes]]:
    results: list[tuple[int, bytes]] = [(0, b"")] * len(calls)

    def run(index: int) -> None:
        results[index] = calls[index]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return results


def test_maximal_hostile_bodies_in_parallel_leave_healthz_answering(
    tiny_artifact: Path, tmp_path: Path
) -> None:
    copies = 3  # of each body, all at once
    with ServeProcess(tmp_path / "serve.log", artifact=tiny_artifact) as server:
        probe = subprocess.Popen(
            [sys.executable, "-c", PROBE, server.url, "3"], stdout=subprocess.PIPE, text=True
        )
        time.sleep(0.5)  # a baseline before the flood
        started = time.perf_counter()
        responses = _in_parallel(
            [_post_raw(server.port, path, body) for path, body in HOSTILE.values() for _ in range(copies)]
        )
        seconds = time.perf_counter() - started
        probed = json.loads(probe.communicate(timeout=60)[0])
        after = httpx.post(
            f"{server.url}/v1/embed", json={"items": [{"text": "an ordinary request afterwards"}]}, timeout=30
        )

    codes = [orjson.loads(body)["error"]["code"] for _, body in responses]
    latencies = probed["latencies_ms"]
    worst = max(latencies)
    record(
        "hostile_bodies",
        body_limit_bytes=BODY_LIMIT,
        bodies_in_parallel=len(responses),
        kinds=sorted(HOSTILE),
        refused_with=sorted(set(codes)),
        seconds_to_refuse_all=seconds,
        healthz_probes=len(latencies),
        healthz_max_ms=worst,
        healthz_median_ms=statistics.median(latencies),
    )
    assert all(status in (400, 422) for status, _ in responses), codes
    assert set(codes) <= EXPECTED_CODES, codes
    assert probed["failures"] == 0 and len(latencies) >= 20
    slowest = sorted(enumerate(latencies), key=lambda x: -x[1])[:5]
    assert worst < LIVENESS_MS, f"/healthz took {worst:.0f} ms while hostile bodies were parsed {slowest}"
    assert after.status_code == 200


def _slow_upload(port: int, declared: int, sent: bytes, path: str = "/v1/embed") -> socket.socket:
    """Headers announcing ``declared`` bytes, then only ``sent``: a client that uploads too slowly."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        f"Content-Length: {declared}\r\n\r\n".encode()
        + sent
    )
    return sock


def _read_status(sock: socket.socket) -> tuple[int, bytes]:
    """Status and body of the one response on ``sock`` (read until the server closes it)."""
    reply = b""
    while chunk := sock.recv(65536):
        reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


def test_a_slow_upload_is_cut_off_after_the_body_read_timeout(tiny_artifact: Path, tmp_path: Path) -> None:
    timeout_s = 1.0
    with ServeProcess(
        tmp_path / "serve.log", artifact=tiny_artifact, body_read_timeout_seconds=timeout_s
    ) as server:
        sock = _slow_upload(server.port, 1000, b'{"items": [{"text": "trick')
        started = time.monotonic()
        healthz = httpx.get(f"{server.url}/healthz", timeout=5)  # the service is not blocked meanwhile
        status, body = _read_status(sock)  # ends when the server hangs up: the rest is not wanted
        waited = time.monotonic() - started
        sock.close()
        counted = server.metric("marc_request_duration_seconds_count", route="/v1/embed", status="408")
    record("slow_upload", body_read_timeout_s=timeout_s, answered_after_s=waited, status=status)
    assert healthz.status_code == 200
    assert status == 408 and orjson.loads(body)["error"]["code"] == "body_timeout"
    assert timeout_s <= waited < timeout_s + 2
    assert counted == 1


def test_past_the_concurrency_limit_requests_are_refused_at_once(tiny_artifact: Path, tmp_path: Path) -> None:
    limit = 4
    with ServeProcess(
        tmp_path / "serve.log",
        artifact=tiny_artifact,
        max_concurrent_requests=limit,
        body_read_timeout_seconds=20,
    ) as server:
        # Slow uploads hold every slot.
        holders = [_slow_upload(server.port, 1000, b'{"items": [') for _ in range(limit)]
        time.sleep(0.3)
        with httpx.Client(base_url=server.url, timeout=10) as client:
            started = time.perf_counter()
            refused = [
                client.post("/v1/embed", json={"items": [{"text": f"over {i}"}]}) for i in range(3 * limit)
            ]
            refused_ms = (time.perf_counter() - started) * 1000 / len(refused)
            probes = [client.get(path).status_code for path in ("/healthz", "/readyz", "/metrics")]
            for sock in holders:
                sock.close()
            time.sleep(0.3)
            served = client.post("/v1/embed", json={"items": [{"text": "after the slow ones left"}]})
    record(
        "concurrency_limit",
        limit=limit,
        requests_past_the_limit=len(refused),
        refused_503=sum(r.status_code == 503 for r in refused),
        mean_refusal_ms=refused_ms,
    )
    assert [r.status_code for r in refused] == [503] * len(refused)
    assert all(r.json()["error"]["code"] == "too_many_requests" and r.headers["retry-after"] for r in refused)
    assert probes == [200, 200, 200]
    assert served.status_code == 200
