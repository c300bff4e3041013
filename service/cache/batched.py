"""Redis calls shared by concurrent requests: one read per event-loop turn, one write per flush.

Each Redis round trip costs the service two socket calls and a pass through the client library,
whatever it carries; per request, that was most of the CPU a new item cost outside the model. So:

* **Reads** asked in the same turn of the event loop - the requests that a window of the
  micro-batcher, or a burst of arrivals, resumed together - go to Redis as one MGET; each caller
  gets its own keys' values (or the same `CacheUnavailable`, which it counts for its own keys).
* **Writes** are queued and the requests that made them do not wait: a background flush sends
  everything queued as one pipelined call, and what is queued while it runs goes in the next one.
  A key queued twice is written once, with its latest value. A read in this process sees the
  queued value of a key at once (read-your-writes); another process sees it after the flush.
  At most ``max_pending`` entries wait: past that the oldest are dropped and counted (Redis is
  slower than the writes coming in; a dropped text key is recomputed on its next miss, a dropped
  id key rewritten on its next request). A write that fails is counted and not retried, as before.
  `close` flushes what is queued before the connection closes.

A read or write that finds the connection lost (`CacheDisconnected`: Redis gone or restarted, and a
restarted Redis may be empty) calls ``on_disconnected``: what this process believed Redis holds is
no longer to be trusted.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable, Sequence
from typing import Literal

from service.cache.stores import Cache, CacheDisconnected, CacheStatus, CacheUnavailable

log = logging.getLogger(__name__)

# One caller's keys and the future its values (or its failure) are delivered to.
Read = tuple[Sequence[str], asyncio.Future[list[bytes | None]]]

WriteResult = Literal["ok", "error"]
LostReason = Literal["error", "dropped"]


class BatchedCache:
    """A `Cache` in front of ``cache`` (Redis) that batches reads per loop turn and writes per flush.
    ``on_write(result)`` is called once per write round trip; ``on_lost(keys, reason)`` with the keys
    of entries that did not reach Redis: ``"error"`` (their write failed) or ``"dropped"`` (shed from
    a full queue); ``on_disconnected()`` when a call found the connection lost."""

    def __init__(
        self,
        cache: Cache,
        *,
        max_pending: int,
        on_write: Callable[[WriteResult], None],
        on_lost: Callable[[list[str], LostReason], None],
        on_disconnected: Callable[[], None],
    ) -> None:
        self.backend = cache.backend
        self._cache = cache
        self._max_pending = max_pending
        self._on_write = on_write
        self._on_lost = on_lost
        self._on_disconnected = on_disconnected
        self._reads: list[Read] = []
        self._pending: dict[str, bytes] = {}  # queued, in queueing order (oldest first)
        self._flushing: dict[str, bytes] = {}  # the batch on its way to Redis now
        self._flusher: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def pending_writes(self) -> int:
        return len(self._pending) + len(self._flushing)

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[bytes | None]] = loop.create_future()
        if not self._reads:
            # Runs after every task that is ready in this turn has had its step (and asked).
            loop.call_soon(self._read_batch)
        self._reads.append((keys, future))
        try:
            values = await future
        finally:
            # A failed read's exception holds this frame in its traceback: without this, frame ->
            # future -> exception -> frame is a cycle that keeps the request's frames (and the model
            # they used) until the collector's next full pass.
            del future
        return self._with_queued(keys, values)

    def _read_batch(self) -> None:
        reads, self._reads = self._reads, []
        task = asyncio.get_running_loop().create_task(self._read(reads), name="marc-cache-read")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _read(self, reads: list[Read]) -> None:
        keys = [key for asked, _ in reads for key in asked]
        try:
            values = await self._cache.get_many(keys)
        except CacheUnavailable as exc:
            if isinstance(exc, CacheDisconnected):
                self._on_disconnected()
            _fail(reads, exc)
            return
        except BaseException as exc:  # cancelled at shutdown, or a bug: never leave a caller hanging
            _fail(reads, CacheUnavailable(f"cache read failed: {type(exc).__name__}"))
            raise
        start = 0
        for asked, future in reads:
            if not future.done():  # its request may have gone
                future.set_result(values[start : start + len(asked)])
            start += len(asked)

    def _with_queued(self, keys: Sequence[str], values: list[bytes | None]) -> list[bytes | None]:
        """``values`` with what this process has queued for those keys and not yet written."""
        if not self._pending and not self._flushing:
            return values
        for index, key in enumerate(keys):
            queued = self._pending.get(key) or self._flushing.get(key)
            if queued is not None:
                values[index] = queued
        return values

    async def set_many(self, entries: Sequence[tuple[str, bytes]]) -> None:
        """Queue ``entries``; returns at once (see the module docstring)."""
        self.queue(entries)

    def queue(self, entries: Sequence[tuple[str, bytes]]) -> None:
        if not entries:
            return
        pending = self._pending
        for key, value in entries:
            pending.pop(key, None)  # a re-queued key moves to the back with its latest value
            pending[key] = value
        excess = len(pending) - self._max_pending
        if excess > 0:
            dropped = list(itertools.islice(pending, excess))
            for key in dropped:
                del pending[key]
            self._on_lost(dropped, "dropped")
            log.debug("cache write queue full: %d oldest entries dropped", excess)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush(), name="marc-cache-write")

    async def _flush(self) -> None:
        # First let every request resumed in this turn queue its writes: one call for all of them.
        await asyncio.sleep(0)
        while self._pending:
            self._flushing, self._pending = self._pending, {}
            try:
                await self._cache.set_many(list(self._flushing.items()))
            except CacheUnavailable as exc:
                log.debug("cache write of %d entries failed: %s", len(self._flushing), exc)
                if isinstance(exc, CacheDisconnected):
                    self._on_disconnected()
                self._on_write("error")
                self._on_lost(list(self._flushing), "error")
            else:
                self._on_write("ok")
            finally:
                self._flushing = {}

    async def drain(self) -> None:
        """Wait until everything queued so far has been written (or has failed)."""
        while self._flusher is not None and not self._flusher.done():
            await asyncio.shield(self._flusher)

    async def ping(self) -> bool:
        return await self._cache.ping()

    def status(self) -> CacheStatus:
        return self._cache.status()

    async def close(self) -> None:
        await self.drain()
        for task in list(self._tasks):
            task.cancel()
        await self._cache.close()


def _fail(reads: list[Read], exc: CacheUnavailable) -> None:
    """Fail every read still waiting, each with its own copy of ``exc`` and no traceback: one shared
    exception would gather every waiter's frames, and this task's frame (which holds ``reads``), into
    one traceback that the futures keep alive."""
    for _, future in reads:
        if not future.done():
            future.set_exception(type(exc)(*exc.args))
