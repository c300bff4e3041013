"""One load phase against a running server, and what phases need: a closed loop that also reads the
server's CPU per request, a pool of texts put in the service's cache, and the bare endpoint that
answers a workload with the service's own bytes. `marc bench`, `loadtest.around_model`,
`loadtest.levers` and `loadtest.profile_path` all measure through these."""

from __future__ import annotations

from pathlib import Path

import httpx

from loadtest.loadgen import LoadResult, LoadSpec, Workload, body_factory, embed_body, run_in_subprocess
from loadtest.processes import ServerProcess

MAX_REQUESTS = 1_000_000  # per closed-loop phase; the time limit ends it first


def closed_loop(
    server: ServerProcess, workload: Workload, *, seconds: float, concurrency: int, warmup: int
) -> LoadResult:
    """Closed-loop load on ``server``; the result carries the server's CPU time per request."""
    spec = LoadSpec(
        base_url=server.url,
        workload=workload,
        max_requests=MAX_REQUESTS,
        max_seconds=seconds,
        concurrency=concurrency,
        warmup_requests=warmup,
    )
    cpu_before = server.cpu_seconds()
    result = run_in_subprocess(spec)
    result.server_cpu_ms_per_request = (server.cpu_seconds() - cpu_before) * 1000 / max(result.requests, 1)
    return result


def warm_pool(url: str, start: int, size: int, *, ids: bool = False) -> None:
    """Put every pool text in the service's cache (so the hot path is all hits); ``ids``: under its
    id too (``sku-<index>``, as `loadgen.Workload` sends them)."""
    workload = Workload(kind="unique", start=start, items_per_request=64, ids=ids)
    with httpx.Client(base_url=url, timeout=120) as client:
        for i in range(0, size, 64):
            indexes = list(range(start + i, start + min(i + 64, size)))
            response = client.post(
                "/v1/embed",
                content=embed_body(workload, indexes),
                headers={"content-type": "application/json"},
            )
            response.raise_for_status()


def bare_endpoint(service_url: str, workload: Workload, scratch: Path) -> ServerProcess:
    """The bare endpoint (not started) answering every request with the service's answer to
    ``workload``'s first request (kept in ``scratch``/payload.json): the same bytes on the wire."""
    payload = httpx.post(
        service_url + workload.route,
        content=body_factory(workload)(0),
        headers={"content-type": "application/json"},
    ).content
    payload_file = scratch / "payload.json"
    payload_file.write_bytes(payload)
    bare_args = ["loadtest.reference_servers", "bare", "--payload", str(payload_file)]
    return ServerProcess("bare endpoint", bare_args, log_path=scratch / "bare.log")
