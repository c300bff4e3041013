"""Bounded loads against a running service: a burst of POSTs at a fixed concurrency (`post_all`), and
a steady stream of /v1/embed requests to keep up while a fault is injected (`LoadLoop`), both on
`ClientThreads` (client threads that run until stopped)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx

# A transport error says which side failed: a request sent on a keep-alive connection the client reused
# can meet the server closing that connection for idleness (the client's pool kept it longer than the
# server's keep-alive); on a connection opened for it, the server dropped a request in flight.
REUSED_CONNECTION = "client side: sent on a reused keep-alive connection the server was closing"
NEW_CONNECTION = "server side: closed a new connection with the request in flight"


@dataclass
class LoadResult:
    """What a bounded load saw: status codes, transport errors by type and side, latencies per status,
    and how long each reused connection had been idle (client side) before a request was sent on it."""

    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    seconds: dict[int, list[float]] = field(default_factory=dict)
    responses: list[httpx.Response] = field(default_factory=list)
    idle_before_reuse: list[float] = field(default_factory=list)

    @property
    def sent(self) -> int:
        return sum(self.statuses.values()) + sum(self.errors.values())


async def post_all(
    url: str, path: str, bodies: list[dict[str, Any]], *, concurrency: int, timeout: float = 60
) -> LoadResult:
    """POST every body, at most ``concurrency`` at once, each on its own connection slot. A transport
    error is counted as "<type> (<side>)", `REUSED_CONNECTION` or `NEW_CONNECTION`."""
    result = LoadResult()
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    last_answer: dict[int, float] = {}  # id(connection's stream) -> when its last response was read
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:

        async def one(body: dict[str, Any]) -> None:
            async with gate:
                sent = {"opened": False, "at": 0.0}

                async def trace(event: str, info: dict[str, Any]) -> None:
                    if event == "connection.connect_tcp.complete":
                        sent["opened"] = True
                    elif event == "http11.send_request_headers.started":
                        sent["at"] = time.monotonic()

                started = time.perf_counter()
                try:
                    response = await client.post(path, json=body, extensions={"trace": trace})
                except httpx.TransportError as exc:
                    side = NEW_CONNECTION if sent["opened"] else REUSED_CONNECTION
                    result.errors[f"{type(exc).__name__} ({side})"] += 1
                    return
                stream = id(response.extensions["network_stream"])
                if not sent["opened"] and stream in last_answer:
                    result.idle_before_reuse.append(sent["at"] - last_answer[stream])
                last_answer[stream] = time.monotonic()
                result.statuses[response.status_code] += 1
                result.seconds.setdefault(response.status_code, []).append(time.perf_counter() - started)
                result.responses.append(response)

        await asyncio.gather(*(one(body) for body in bodies))
    return result


@dataclass
class Sent:
    started: float  # time.monotonic()
    finished: float
    status: int | None  # None = transport error
    error: str = ""
    cached: list[bool] = field(default_factory=list)


Threads = TypeVar("Threads", bound="ClientThreads")


class ClientThreads:
    """``clients`` daemon threads, each running ``self._run(index)`` from the ``with`` block's start
    until ``stop()`` or its end (``_stop`` is set, then each thread is joined)."""

    join_seconds = 30.0

    def __init__(self, clients: int) -> None:
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)]

    def __enter__(self: Threads) -> Threads:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.join_seconds)

    def stop(self) -> None:
        self.__exit__()

    def _run(self, index: int) -> None:
        raise NotImplementedError


class LoadLoop(ClientThreads):
    """Clients in threads sending POST /v1/embed one after another until stopped or ``max_requests``
    are sent: a bounded steady load to run while a fault is injected."""

    def __init__(
        self,
        url: str,
        texts: list[str],
        *,
        clients: int = 4,
        items_per_request: int = 2,
        max_requests: int = 5000,
        timeout: float = 10,
        routing: threading.Event | None = None,
    ) -> None:
        """``routing``: when given, new requests are sent only while it is set (a load balancer that
        stops routing to a replica once its readiness fails); requests in flight still complete."""
        self.url, self.texts, self.timeout = url, texts, timeout
        self.routing = routing
        self.items_per_request, self.max_requests = items_per_request, max_requests
        self.sent: list[Sent] = []
        super().__init__(clients)

    def _run(self, client_index: int) -> None:
        counter = client_index
        with httpx.Client(base_url=self.url, timeout=self.timeout) as client:
            while not self._stop.is_set():
                if self.routing is not None and not self.routing.is_set():
                    time.sleep(0.01)
                    continue
                with self._lock:
                    if len(self.sent) >= self.max_requests:
                        return
                pool = self.texts
                items = [{"text": pool[(counter + k) % len(pool)]} for k in range(self.items_per_request)]
                counter += 7
                started = time.monotonic()
                try:
                    response = client.post("/v1/embed", json={"items": items})
                    cached = [d["cached"] for d in response.json()["data"]] if response.is_success else []
                    outcome = Sent(started, time.monotonic(), response.status_code, cached=cached)
                except httpx.TransportError as exc:
                    outcome = Sent(started, time.monotonic(), None, error=type(exc).__name__)
                with self._lock:
                    self.sent.append(outcome)

    def snapshot(self) -> list[Sent]:
        with self._lock:
            return list(self.sent)

    def failures(self) -> list[Sent]:
        return [s for s in self.snapshot() if s.status != 200]
