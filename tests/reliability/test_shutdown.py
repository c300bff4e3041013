"""Graceful shutdown of a real `marc serve` process: SIGTERM during load turns /readyz to 503 first,
requests keep being served through the drain period, then new connections are refused, requests in
flight complete, and the process exits within the grace period. Zero accepted requests are dropped."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.support.load import LoadLoop
from tests.support.reliability_report import record
from tests.support.servers import ServeProcess

DRAIN_SECONDS = 1.5
UVICORN_GRACE_SECONDS = 30  # timeout_graceful_shutdown of `marc serve`
TEXTS = [f"shutdown test item {i}, a wool coat in size {i % 9}" for i in range(20_000)]  # all misses


@pytest.mark.slow
def test_sigterm_during_load_drops_nothing(tiny_artifact: Path, tmp_path: Path) -> None:
    routing = threading.Event()
    routing.set()
    readiness: list[tuple[float, int | str]] = []  # (time, status or error) as a load balancer sees it

    def probe_readiness(server: ServeProcess, until: threading.Event) -> None:
        with httpx.Client(timeout=2) as client:
            while not until.is_set():
                try:
                    status: int | str = client.get(f"{server.url}/readyz").status_code
                except httpx.TransportError as exc:
                    status = type(exc).__name__
                readiness.append((time.monotonic(), status))
                if status != 200:
                    routing.clear()  # the balancer stops sending new requests here
                time.sleep(0.02)

    # A 150 ms batch window keeps requests in flight at any moment.
    server = ServeProcess(
        tmp_path / "serve.log", artifact=tiny_artifact, drain_seconds=DRAIN_SECONDS, max_wait_ms=150
    )
    done = threading.Event()
    with server, LoadLoop(server.url, TEXTS, clients=6, routing=routing) as load:
        prober = threading.Thread(target=probe_readiness, args=(server, done), daemon=True)
        prober.start()
        time.sleep(1.0)
        server.signal(signal.SIGTERM)
        signalled_at = time.monotonic()
        exit_code = server.wait_exit(DRAIN_SECONDS + UVICORN_GRACE_SECONDS + 10)
        exited_at = time.monotonic()
        load.stop()
        done.set()
        prober.join(10)
        after_exit = None
        try:
            httpx.post(f"{server.url}/v1/embed", json={"items": [{"text": "too late"}]}, timeout=2)
        except httpx.ConnectError as exc:
            after_exit = type(exc).__name__
        sent = load.snapshot()
        log = server.log()

    unready_at = min(t for t, status in readiness if t > signalled_at and status == 503)
    refused_at = min(t for t, status in readiness if t > signalled_at and status == "ConnectError")
    in_flight = [s for s in sent if s.started < signalled_at < s.finished]
    during_drain = [s for s in sent if signalled_at <= s.started]
    dropped = [s for s in sent if s.status != 200]
    record(
        "shutdown",
        drain_seconds=DRAIN_SECONDS,
        requests_sent=len(sent),
        in_flight_at_sigterm=len(in_flight),
        accepted_after_sigterm=len(during_drain),
        dropped_requests=len(dropped),
        readiness_503_after_ms=(unready_at - signalled_at) * 1000,
        connections_refused_after_s=refused_at - signalled_at,
        exit_after_s=exited_at - signalled_at,
        exit_code=exit_code,
    )
    assert dropped == [], dropped[:5]
    assert in_flight, "no request was in flight at SIGTERM: the test proved nothing"
    assert unready_at < refused_at  # readiness turned false before the listener closed
    assert exit_code in (0, -signal.SIGTERM), log  # uvicorn re-raises the signal after a clean stop
    assert "Application shutdown complete" in log and "draining" in log, log
    assert after_exit == "ConnectError"  # new requests are refused once it is gone
