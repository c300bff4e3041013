"""Graceful shutdown for `marc serve`: on SIGTERM/SIGINT, /readyz turns 503 first while requests are
still served for ``drain_seconds`` (load balancers stop sending), then uvicorn stops accepting,
finishes in-flight requests and runs the app's shutdown. A second signal skips the drain."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from types import FrameType

import uvicorn

log = logging.getLogger(__name__)


@dataclass
class Lifecycle:
    """Shared between the server (which sets it) and /readyz (which reports it)."""

    draining: bool = False


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, lifecycle: Lifecycle, drain_seconds: float) -> None:
        super().__init__(config)
        self.lifecycle = lifecycle
        self.drain_seconds = drain_seconds

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.lifecycle.draining or self.drain_seconds <= 0:
            self.lifecycle.draining = True
            super().handle_exit(sig, frame)
            return
        self.lifecycle.draining = True
        log.info("signal %d: readiness off, draining for %.1f s before shutdown", sig, self.drain_seconds)
        timer = threading.Timer(self.drain_seconds, super().handle_exit, args=(sig, frame))
        timer.daemon = True
        timer.start()
