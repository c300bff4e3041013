"""Pure ASGI middleware around the whole app (no per-request task, no body copy).

* `RequestMetricsMiddleware` - outermost: `marc_request_duration_seconds{route,status}` for every
  response (refusals included) and the `x-total-time-ms` header. Requests whose client hung up are
  answered (unread) with 499 by the embed routes, so they are counted apart from server errors.
* `ConcurrencyLimitMiddleware` - at most ``limit`` requests in the app at once (bodies being read
  included), so a flood of requests or slow uploads cannot take all memory or starve the event loop;
  beyond it, 503 at once. The probes and the metrics scrape are never refused.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from prometheus_client import Histogram
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import error_response
from service.metrics import Metrics


class RequestMetricsMiddleware:
    def __init__(self, app: ASGIApp, *, metrics: Metrics, known_paths: Iterable[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.known_paths = frozenset(known_paths)
        # Histogram children by (route, status): labels() takes a lock and builds a key per call.
        self._durations: dict[tuple[str, int], Histogram] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # if nothing is sent

        async def send_with_timing(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                total = (b"x-total-time-ms", b"%.3f" % ((time.perf_counter() - started) * 1000))
                headers = message.get("headers")
                if isinstance(headers, list):  # every response this app sends: no copy needed
                    headers.append(total)
                else:
                    MutableHeaders(scope=message).append(*(value.decode() for value in total))
            await send(message)

        try:
            await self.app(scope, receive, send_with_timing)
        finally:
            # The request's own path when it is a route's (every route here is a fixed path; FastAPI's
            # scope["route"] is not set on this scope for its routes), else a templated route's.
            path = scope["path"]
            if path not in self.known_paths:
                path = getattr(scope.get("route"), "path", None)
            # Unknown paths share one label so scanners can't blow up the metric's cardinality.
            label = path if path in self.known_paths else "unmatched"
            histogram = self._durations.get((label, status))
            if histogram is None:
                histogram = self.metrics.request_duration.labels(route=label, status=str(status))
                self._durations[label, status] = histogram
            histogram.observe(time.perf_counter() - started)


class ConcurrencyLimitMiddleware:
    def __init__(self, app: ASGIApp, *, limit: int, exempt_paths: Iterable[str]) -> None:
        self.app = app
        self.limit = limit
        self.exempt_paths = frozenset(exempt_paths)
        self.active = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt_paths:
            await self.app(scope, receive, send)
            return
        if self.active >= self.limit:
            response = error_response(
                503,
                f"too many requests in progress (limit {self.limit}); retry later",
                type="overloaded",
                code="too_many_requests",
                headers={"Retry-After": "1"},
            )
            await response(scope, receive, send)
            return
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1
