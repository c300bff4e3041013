"""Pure ASGI middleware (no per-request task or body copy beyond what is needed).

* `RequestMetricsMiddleware` - outermost: `marc_request_duration_seconds{route,status}` for every
  response (refusals included) and the `x-total-time-ms` header.
* `RequestGuardMiddleware` - refuses, before anything is parsed or queued, a body that is not JSON
  (415) or is larger than the limit (413: by Content-Length, else while the body streams in).
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from prometheus_client import Histogram
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import error_response
from service.metrics import Metrics

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def _is_json(content_type: str | None) -> bool:
    if not content_type:
        return False
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


def replay_body(body: bytes, receive: Receive) -> Receive:
    """A receive channel that delivers ``body`` (already read) in one message, then the server's."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # later calls wait for http.disconnect, as the server's would

    return replay


async def read_body(receive: Receive) -> bytes | None:
    """The whole request body; None if the client disconnected before sending it all."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


class RequestGuardMiddleware:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if not _is_json(headers.get("content-type")):
            got = headers.get("content-type") or "none"
            response = error_response(
                415,
                f"content-type: must be application/json (got {got})",
                type="unsupported_media_type",
                param="content-type",
            )
            await response(scope, receive, send)
            return
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._too_large(scope, receive, send)
            return
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # client gone before it finished sending: nothing to answer
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_body_bytes:
                await self._too_large(scope, receive, send)
                return

        await self.app(scope, replay_body(bytes(body), receive), send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(
            413,
            f"body: larger than the {self.max_body_bytes}-byte limit",
            type="payload_too_large",
            param="body",
        )
        await response(scope, receive, send)


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
        status = 500

        async def send_with_timing(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                elapsed_ms = (time.perf_counter() - started) * 1000
                MutableHeaders(scope=message).append("x-total-time-ms", f"{elapsed_ms:.3f}")
            await send(message)

        try:
            await self.app(scope, receive, send_with_timing)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or scope["path"]
            # Unknown paths share one label so scanners can't blow up the metric's cardinality.
            label = path if path in self.known_paths else "unmatched"
            histogram = self._durations.get((label, status))
            if histogram is None:
                histogram = self.metrics.request_duration.labels(route=label, status=str(status))
                self._durations[label, status] = histogram
            histogram.observe(time.perf_counter() - started)
