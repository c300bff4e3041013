"""Dynamic micro-batching: merge texts from concurrent requests into a few ONNX Runtime runs.

* Admission is all-or-nothing per request and happens before anything is queued: a request whose
  new texts don't fit in ``max_queue_items`` gets `Overloaded` (-> 503 + Retry-After) at once.
* Identical texts already queued or running are computed once: the request joins the existing job.
* A window collects up to ``max_batch_size`` items or waits ``max_wait_ms``; with one model runner
  it then also takes what is already queued (up to ``BACKLOG_RUNS`` runs), so a backlog is sorted by
  length across runs; with several, a backlog becomes one window per run, spread over the runners.
  The encoder cuts a window into runs of similar length, each of at most ``max_batch_size`` rows
  and, when ``max_batch_tokens`` is set, at most that many tokens padded (rows x longest row).
* Jobs whose every waiting request has gone (cancelled) are dropped before they reach the model.
* The model runs in ``model_runners`` dedicated worker threads, so the event loop never blocks.
  With 1 runs never overlap and ORT's intra-op threads use the cores; with 2 (the service's
  default on CPU) and half the CPUs each, two windows run side by side without the per-operator
  synchronisation of one run over all cores. Tokenising and padding a window happen in another
  thread: up to ``pipeline_windows`` windows (at least one per runner) are in the batcher at once,
  so the next window is collected and prepared while the model runs and starts as soon as a
  runner is free.

The event loop's work per item is a few list and dict operations: a request waits on one future,
resolved when the last window holding one of its texts is done (not a future per text); the queue is
a deque the collector is woken for once per request; a window's rows reach each of its requests in
one array copy; and a run's start is counted by the runner thread itself (no wake-up of the loop).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from service.embeddings import Embeddings
from service.metrics import ModelMetrics
from service.model.encoder import EncodedTexts

log = logging.getLogger(__name__)

BACKLOG_RUNS = 4
RETRY_AFTER_SECONDS = 1


class Overloaded(RuntimeError):
    """The queue cannot take this request now."""

    retry_after_seconds = RETRY_AFTER_SECONDS


class ShuttingDown(RuntimeError):
    """The batcher is stopping and accepts no new work."""

    retry_after_seconds = RETRY_AFTER_SECONDS


class InferenceFailed(RuntimeError):
    """ONNX Runtime raised while computing a batch (a server fault, logged with its traceback)."""


class TextEncoder(Protocol):
    def prepare(self, texts: Sequence[str], max_batch_size: int, max_batch_tokens: int = 0) -> Any:
        """Everything before the model (tokenise, sort, pad into runs); its result goes to ``run``."""
        ...

    def run(self, prepared: Any) -> EncodedTexts: ...


@dataclass(frozen=True)
class Embedded:
    rows: Embeddings  # in request order
    queue_seconds: float  # longest wait of this request's texts before their window ran
    inference_seconds: float  # model time of the windows this request's texts were in


class _Request:
    """One request's wait: one future, resolved when the window of its last text is done."""

    __slots__ = (
        "arrived",
        "future",
        "inference_seconds",
        "jobs",
        "queue_seconds",
        "remaining",
        "rows",
        "size",
    )

    def __init__(self, future: asyncio.Future[Embedded], size: int, arrived: float) -> None:
        self.future = future
        self.size = size
        self.remaining = size
        self.arrived = arrived
        self.jobs: list[_Job] = []
        self.rows: Embeddings | None = None
        self.queue_seconds = 0.0
        self.inference_seconds = 0.0

    def receive(
        self, window: Embeddings, positions: list[int], rows: list[int], waited: float, seconds: float
    ) -> None:
        """Its texts at ``positions`` are the window's ``rows``; resolved once nothing is missing."""
        if self.rows is None:
            if len(rows) == self.size and rows == positions:  # the whole request, in order: no copy
                self.future.set_result(
                    Embedded(
                        window if len(window.tokens) == self.size else window.take(rows), waited, seconds
                    )
                )
                return
            self.rows = Embeddings.empty(self.size, window.vectors.shape[1])
        self.rows.put(positions, window.take(rows))
        self.queue_seconds = max(self.queue_seconds, waited)
        self.inference_seconds += seconds
        self.remaining -= len(positions)
        if self.remaining == 0:
            self.future.set_result(Embedded(self.rows, self.queue_seconds, self.inference_seconds))


class _Job:
    """One text queued or running, and the requests waiting for it (request, position in it)."""

    __slots__ = ("enqueued", "live", "text", "waiters")

    def __init__(self, text: str, enqueued: float) -> None:
        self.text = text
        self.enqueued = enqueued
        self.waiters: list[tuple[_Request, int]] = []
        self.live = 0  # waiting requests that have not gone


class MicroBatcher:
    def __init__(
        self,
        encoder: TextEncoder,
        metrics: ModelMetrics,
        *,
        max_batch_size: int,
        max_wait_ms: float,
        max_queue_items: int,
        pipeline_windows: int = 1,
        model_runners: int = 1,
        max_batch_tokens: int = 0,
    ) -> None:
        self._encoder = encoder
        self._metrics = metrics
        self._max_batch_size = max_batch_size
        self._max_batch_tokens = max_batch_tokens
        self._max_wait = max_wait_ms / 1000
        self._max_queue_items = max_queue_items
        self._pending: collections.deque[_Job] = collections.deque()
        self._work = asyncio.Event()  # set when something is queued (or the batcher stops)
        self._inflight: dict[str, _Job] = {}
        self._executor = ThreadPoolExecutor(max_workers=model_runners, thread_name_prefix="marc-onnx")
        self._prepare_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="marc-tokenize")
        self._windows = asyncio.Semaphore(max(pipeline_windows, model_runners))
        # With one runner a window also takes a backlog (sorted by length across its runs); with
        # several, each window is one run, so a backlog spreads over the runners.
        self._window_items = max_batch_size * (BACKLOG_RUNS if model_runners == 1 else 1)
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        # Items taken into windows, and those of them whose run has started (counted by the runner
        # threads, under the lock): the difference is still waiting for the model.
        self._collected = 0
        self._started = 0
        self._started_lock = threading.Lock()
        self._in_flight = 0  # windows sent to the threads and not back yet
        self._idle = asyncio.Event()  # set while none is
        self._idle.set()
        metrics.sample(metrics.queue_depth, lambda: self.queued_items)

    @property
    def queued_items(self) -> int:
        """Items waiting for the model: in the queue, or in a window being prepared or waiting for
        the run before it."""
        return len(self._pending) + self._collected - self._started

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="marc-batcher")

    async def stop(self, timeout_seconds: float = 30.0) -> None:
        """Refuse new work, finish what is queued, stop the worker threads."""
        self._closing = True
        self._work.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout_seconds)
            except TimeoutError:
                log.warning("batcher did not drain within %.0f s; failing the rest", timeout_seconds)
        self._fail(list(self._inflight.values()), ShuttingDown("the service is shutting down"))
        self._inflight.clear()
        self._executor.shutdown(wait=True)
        self._prepare_executor.shutdown(wait=True)

    async def embed(self, texts: Sequence[str]) -> Embedded:
        """Vectors for ``texts`` (normalised, each once), computed by the model."""
        if self._closing:
            raise ShuttingDown("the service is shutting down")
        inflight = self._inflight
        fresh = sum(text not in inflight for text in texts)
        if self.queued_items + fresh > self._max_queue_items:
            self._metrics.overload_rejections.inc()
            raise Overloaded(
                f"queue full ({self.queued_items} items waiting, limit {self._max_queue_items}); retry later"
            )
        # No await between the check above and the appends below: admission is atomic.
        now = time.perf_counter()
        request = _Request(asyncio.get_running_loop().create_future(), len(texts), now)
        for position, text in enumerate(texts):
            job = inflight.get(text)
            if job is None:
                job = inflight[text] = _Job(text, now)
                self._pending.append(job)
            job.waiters.append((request, position))
            job.live += 1
            request.jobs.append(job)
        if fresh < len(texts):
            self._metrics.items_deduplicated.inc(len(texts) - fresh)
        if fresh:
            self._work.set()
        try:
            return await request.future
        except BaseException:
            for job in request.jobs:  # this request no longer waits (cancelled: its client went)
                job.live -= 1
            raise

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            # A window is collected only when fewer than max(pipeline_windows, model_runners) are
            # prepared or running: while they are, new items wait in the queue and the next window
            # takes them all.
            await self._windows.acquire()
            jobs = await self._collect()
            if jobs is None:  # stopping, and everything queued before is in a window
                self._windows.release()
                await self._idle.wait()
                return
            live = []
            for job in jobs:
                if job.live > 0:
                    live.append(job)
                else:
                    self._forget(job)
            if len(live) < len(jobs):
                self._metrics.items_dropped.inc(len(jobs) - len(live))
            if live:
                self._dispatch(loop, live)
            else:
                self._windows.release()

    async def _collect(self) -> list[_Job] | None:
        """One window of jobs; None once the batcher stops and the queue is empty."""
        pending, work = self._pending, self._work
        while not pending:
            if self._closing:
                return None
            work.clear()
            await work.wait()
        jobs = self._take(self._max_batch_size)
        if len(jobs) < self._max_batch_size and self._max_wait > 0 and not self._closing:
            # Wait for more until the window is full or max_wait has passed: a timer ends the wait
            # (no timeout exception per window). Its own flag says it fired: the loop's clock may
            # still read a hair before the deadline when its timer runs.
            expired = False

            def expire() -> None:
                nonlocal expired
                expired = True
                work.set()

            timer = asyncio.get_running_loop().call_later(self._max_wait, expire)
            try:
                while len(jobs) < self._max_batch_size and not self._closing and not expired:
                    if not pending:
                        work.clear()
                        await work.wait()
                    jobs += self._take(self._max_batch_size - len(jobs))
            finally:
                timer.cancel()
        return jobs + self._take(self._window_items - len(jobs))

    def _take(self, count: int) -> list[_Job]:
        pending = self._pending
        return [pending.popleft() for _ in range(min(count, len(pending)))]

    def _dispatch(self, loop: asyncio.AbstractEventLoop, jobs: list[_Job]) -> None:
        """Send a window on its way: the tokenize thread prepares it and hands it straight to a
        runner thread, which tells the loop once, when the run is done (one hand-off from the loop
        and one back per window)."""
        self._collected += len(jobs)
        if self._in_flight == 0:
            self._idle.clear()
        self._in_flight += 1
        texts = [job.text for job in jobs]

        def tell_loop(callback: Callable[..., None], *args: object) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                loop.call_soon_threadsafe(callback, jobs, *args)

        def run(prepared: Any) -> None:  # in a runner thread
            with self._started_lock:
                self._started += len(jobs)
            started = time.perf_counter()
            try:
                encoded = self._encoder.run(prepared)
            except Exception as exc:
                tell_loop(self._window_failed, exc)
            else:
                tell_loop(self._window_done, started, encoded)

        def prepare() -> None:  # in the tokenize thread
            try:
                prepared = self._encoder.prepare(texts, self._max_batch_size, self._max_batch_tokens)
                self._executor.submit(run, prepared)
            except Exception as exc:
                with self._started_lock:  # it never reaches the model
                    self._started += len(jobs)
                tell_loop(self._window_failed, exc)

        self._prepare_executor.submit(prepare)

    def _window_over(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0:
            self._idle.set()
        self._windows.release()

    def _window_failed(self, jobs: list[_Job], exc: Exception) -> None:
        self._window_over()
        log.error("inference failed for a window of %d items", len(jobs), exc_info=exc)
        self._fail(jobs, InferenceFailed(f"inference failed: {type(exc).__name__}"))

    def _window_done(self, jobs: list[_Job], started: float, encoded: EncodedTexts) -> None:
        self._window_over()
        seconds = sum(run.seconds for run in encoded.runs)
        for run in encoded.runs:
            self._metrics.batch_size.observe(run.items)
            self._metrics.inference_duration.observe(run.seconds)
        self._metrics.inference_cpu.inc(sum(run.cpu_seconds for run in encoded.runs))
        self._metrics.items_embedded.inc(len(jobs))
        # Each waiting request gets all of its rows in this window at once.
        parts: dict[_Request, tuple[list[int], list[int], float]] = {}
        for row, job in enumerate(jobs):
            self._forget(job)
            for request, position in job.waiters:
                if request.future.done():  # it has gone
                    continue
                part = parts.get(request)
                waited = started - max(job.enqueued, request.arrived)
                if part is None:
                    parts[request] = ([position], [row], waited)
                else:
                    part[0].append(position)
                    part[1].append(row)
                    if waited > part[2]:
                        parts[request] = (part[0], part[1], waited)
        for request, (positions, rows, waited) in parts.items():
            request.receive(encoded.rows, positions, rows, waited, seconds)

    def _fail(self, jobs: list[_Job], error: Exception) -> None:
        for job in jobs:
            self._forget(job)
            for request, _ in job.waiters:
                if not request.future.done():
                    request.future.set_exception(error)

    def _forget(self, job: _Job) -> None:
        if self._inflight.get(job.text) is job:
            del self._inflight[job.text]
