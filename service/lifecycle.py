"""The process's signals. Graceful shutdown for `marc serve`: on SIGTERM/SIGINT, /readyz turns 503
first while requests are still served for ``drain_seconds`` (load balancers stop sending), then
uvicorn stops accepting, finishes in-flight requests and runs the app's shutdown. A second signal
skips the drain. SIGHUP reloads the model configuration (`ReloadOnSighup`)."""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any

import uvicorn
from starlette.types import ASGIApp

from service.registry import ReloadFailed
from service.settings import Settings

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

    @classmethod
    def serving(cls, app: ASGIApp, settings: Settings, lifecycle: Lifecycle, **bind: Any) -> DrainingServer:
        """The server `marc serve` runs ``app`` with, in one process or in each of ``--workers``: the
        service's log level, no access log below debug (per-request lines cost throughput; metrics
        cover it), 30 s for in-flight requests after the drain, idle connections kept
        ``keep_alive_seconds``; ``bind``: host/port (one process)."""
        config = uvicorn.Config(
            app,
            log_level=settings.log_level,
            access_log=settings.log_level == "debug",
            timeout_graceful_shutdown=30,
            timeout_keep_alive=settings.keep_alive_seconds,
            **bind,
        )
        return cls(config, lifecycle, settings.drain_seconds)

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


class ReloadOnSighup:
    """SIGHUP runs ``reload("SIGHUP")`` on the event loop (one at a time: the reload serialises
    itself). Only where signals can be handled: the main thread of `marc serve` (a test's server in a
    background thread has no signal handler and reloads through the admin route)."""

    def __init__(self, reload: Callable[[str], Awaitable[object]]) -> None:
        self._reload = reload
        self._tasks: set[asyncio.Task[object]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    def install(self) -> bool:
        if threading.current_thread() is not threading.main_thread():
            return False
        self._loop = asyncio.get_running_loop()
        self._loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        return True

    def _on_sighup(self) -> None:
        log.info("SIGHUP: reloading the model configuration")
        task = asyncio.ensure_future(self._run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self) -> None:
        try:
            await self._reload("SIGHUP")
        except ReloadFailed:
            pass  # logged and counted by the reload; the models served before keep serving
        except Exception:
            log.exception("SIGHUP reload failed unexpectedly; the models served before keep serving")

    def remove(self) -> None:
        if self._loop is not None:
            self._loop.remove_signal_handler(signal.SIGHUP)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)  # not SIG_DFL: a late SIGHUP must not kill the drain
            self._loop = None
        for task in self._tasks:
            task.cancel()
