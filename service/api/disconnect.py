"""Drop work for clients that have gone: the request's work is cancelled when the connection closes,
which releases its queued items (the batcher drops items nobody waits for)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from starlette.types import Receive

T = TypeVar("T")

# A request still waiting for the model after this long starts watching for its client to go.
WATCH_AFTER_SECONDS = 0.02


class ClientDisconnected(Exception):
    """The client closed the connection before its answer was ready."""


async def _wait_for_disconnect(receive: Receive) -> None:
    # The body is already read, so the next message the server delivers is http.disconnect.
    while (await receive())["type"] != "http.disconnect":
        pass


async def cancel_on_disconnect(receive: Receive, work: Awaitable[T]) -> T:
    """The result of ``work``, awaited in the calling task; ClientDisconnected (and ``work``
    cancelled) if the client goes first. The watch starts only once the work has taken
    `WATCH_AFTER_SECONDS`: most requests are answered sooner, and a watcher task for each would cost
    more than answering them. The watcher cancels the caller when the connection closes."""
    loop = asyncio.get_running_loop()
    caller = asyncio.current_task()
    assert caller is not None
    state = {"waiting": True, "gone": False}
    watcher: asyncio.Task[None] | None = None

    async def watch() -> None:
        await _wait_for_disconnect(receive)
        if state["waiting"]:  # the caller is suspended in `await work`: no other place to cancel it
            state["gone"] = True
            caller.cancel()

    def start_watching() -> None:
        nonlocal watcher
        if state["waiting"]:
            watcher = loop.create_task(watch(), name="marc-disconnect")

    timer = loop.call_later(WATCH_AFTER_SECONDS, start_watching)
    try:
        return await work
    except asyncio.CancelledError:
        if state["gone"] and caller.uncancel() == 0:  # ours, not a shutdown's
            raise ClientDisconnected() from None
        raise
    finally:
        state["waiting"] = False
        timer.cancel()
        if watcher is not None:
            watcher.cancel()
