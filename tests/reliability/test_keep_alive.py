"""Keep-alive against a real `marc serve` (one worker and two): a client that reuses idle connections at
and around the service's idle timeout (MARC_KEEP_ALIVE_SECONDS, small here) never sees a closed
connection for a request it sent before that timeout, and the service really closes idle connections
after it. A client (or load balancer) whose own idle timeout is below the service's can then never
send on a connection the service is closing: the default, 75 s, is above the common 60 s."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.support.reliability_report import record
from tests.support.servers import ServeProcess

KEEP_ALIVE_SECONDS = 1.0
# The client's pool drops a connection idle this long, as a load balancer configured below the service's
# timeout does (60 s against 75 s); what is left is the time a response takes to reach the client.
CLIENT_IDLE_SECONDS = 0.7
# Idle gaps before the next request on the same connection: well inside, at and around the client's
# limit, at and past the service's.
GAPS = (0.05, 0.3, 0.6, 0.65, 0.7, 0.75, 0.9, 1.0, 1.1, 1.4)
CLIENTS = 4


def _local_port(response: httpx.Response) -> int:
    return response.extensions["network_stream"].get_extra_info("client_addr")[1]


def _reuse_at_gaps(url: str, gaps: tuple[float, ...], outcomes: Counter[str], lock: threading.Lock) -> None:
    limits = httpx.Limits(max_connections=1, keepalive_expiry=CLIENT_IDLE_SECONDS)
    with httpx.Client(base_url=url, timeout=10, limits=limits) as client:
        for round_ in range(2):
            for gap in gaps:
                body = {"items": [{"id": f"ka-{round_}-{gap}", "text": f"keep-alive gap {gap}"}]}
                try:
                    outcome = str(client.post("/v1/embed", json=body).status_code)
                except httpx.TransportError as exc:
                    outcome = f"{type(exc).__name__} after {gap} s idle"
                with lock:
                    outcomes[outcome] += 1
                time.sleep(gap)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_idle_connections_reused_at_the_boundary_never_fail(
    tiny_artifact: Path, tmp_path: Path, workers: int
) -> None:
    server = ServeProcess(
        tmp_path / "serve.log", artifact=tiny_artifact, keep_alive_seconds=KEEP_ALIVE_SECONDS, workers=workers
    )
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()
    with server:
        # The service's side: a connection idle for less than the timeout is kept, one idle past it is
        # closed by the service (the client notices the close and opens a new one, without an error).
        with httpx.Client(
            base_url=server.url, timeout=10, limits=httpx.Limits(keepalive_expiry=60)
        ) as client:
            first = _local_port(client.get("/healthz"))
            time.sleep(KEEP_ALIVE_SECONDS / 2)
            kept = _local_port(client.get("/healthz"))
            time.sleep(KEEP_ALIVE_SECONDS * 1.5)
            after_timeout = client.get("/healthz")
            reopened = _local_port(after_timeout)
        # Several clients at once, each reusing its one connection at every gap, in different orders.
        threads = [
            threading.Thread(target=_reuse_at_gaps, args=(server.url, GAPS[i:] + GAPS[:i], outcomes, lock))
            for i in range(CLIENTS)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    record(
        f"keep_alive_{workers}_workers",
        keep_alive_seconds=KEEP_ALIVE_SECONDS,
        client_idle_seconds=CLIENT_IDLE_SECONDS,
        gaps_s=", ".join(str(g) for g in GAPS),
        requests=sum(outcomes.values()),
        outcomes=dict(outcomes),
    )
    assert kept == first, "a connection idle for half the keep-alive timeout was closed"
    assert after_timeout.status_code == 200
    assert reopened != first, "the service kept a connection idle past its keep-alive timeout"
    assert outcomes == Counter({"200": CLIENTS * 2 * len(GAPS)}), outcomes
