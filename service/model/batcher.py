"""Dynamic micro-batching: merge texts from concurrent requests into a few ONNX Runtime runs.

* Admission is all-or-nothing per request and happens before anything is queued: a request whose
  new texts don't fit in ``max_queue_items`` gets `Overloaded` (-> 503 + Retry-After) at once.
* Identical texts already queued or running are computed once: the request joins the existing job.
* A window collects up to ``max_batch_size`` items or waits ``max_wait_ms``; with one model runner
  it then also takes what is already queued (up to ``BACKLOG_RUNS`` runs), so a backlog is sorted by
  length across runs; with several, a backlog becomes one window per run, spread over the runners.
* Jobs whose every waiting request has gone (cancelled) are dropped before they reach the model.
* The model runs in ``model_runners`` dedicated worker threads, so the event loop never blocks.
  With 1 runs never overlap and ORT's intra-op threads use the cores; with 2 (the service's
  default) and half the CPUs each, two windows run side by side without the per-operator
  synchronisation of one run over all cores. Tokenising and padding a window happen in another
  thread: up to ``pipeline_windows`` windows (at least one per runner) are in the batcher at once,
  so the next window is collected and prepared while the model runs and starts as soon as a
  runner is free.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from service.cache.values import Embeddings
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
    def prepare(self, texts: Sequence[str], max_batch_size: int) -> Any:
        """Everything before the model (tokenise, pad); its result goes to ``run``."""
        ...

    def run(self, prepared: Any) -> EncodedTexts: ...


@dataclass(frozen=True)
class WindowTiming:
    started: float  # time.perf_counter() when the window went to the model
    inference_seconds: float  # ONNX Runtime time of all runs in the window


@dataclass(frozen=True)
class _Result:
    rows: Embeddings  # the window's rows
    row: int  # this job's row in them
    timing: WindowTiming


@dataclass(eq=False)
class _Job:
    text: str
    enqueued: float
    future: asyncio.Future[_Result]
    waiters: int = field(default=1)


@dataclass(frozen=True)
class Embedded:
    rows: Embeddings  # in request order
    queue_seconds: float  # longest wait of this request's texts before their window ran
    inference_seconds: float  # model time of the windows this request's texts were in


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
    ) -> None:
        self._encoder = encoder
        self._metrics = metrics
        self._max_batch_size = max_batch_size
        self._max_wait = max_wait_ms / 1000
        self._max_queue_items = max_queue_items
        self._queue: asyncio.Queue[_Job | None] = asyncio.Queue()
        self._inflight: dict[str, _Job] = {}
        self._executor = ThreadPoolExecutor(max_workers=model_runners, thread_name_prefix="marc-onnx")
        self._prepare_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="marc-tokenize")
        self._windows = asyncio.Semaphore(max(pipeline_windows, model_runners))
        # With one runner a window also takes a backlog (sorted by length across its runs); with
        # several, each window is one run, so a backlog spreads over the runners.
        self._window_items = max_batch_size * (BACKLOG_RUNS if model_runners == 1 else 1)
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._in_windows = 0  # items of collected windows whose run has not started yet
        metrics.sample(metrics.queue_depth, lambda: self.queued_items)

    @property
    def queued_items(self) -> int:
        """Items waiting for the model: in the queue, or in a window being prepared or waiting for
        the run before it."""
        return self._queue.qsize() + self._in_windows

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="marc-batcher")

    async def stop(self, timeout_seconds: float = 30.0) -> None:
        """Refuse new work, finish what is queued, stop the worker thread."""
        self._closing = True
        if self._task is not None:
            self._queue.put_nowait(None)  # FIFO: everything queued before it is still computed
            try:
                await asyncio.wait_for(self._task, timeout_seconds)
            except TimeoutError:
                log.warning("batcher did not drain within %.0f s; failing the rest", timeout_seconds)
        for job in self._inflight.values():
            if not job.future.done():
                job.future.set_exception(ShuttingDown("the service is shutting down"))
        self._inflight.clear()
        self._executor.shutdown(wait=True)
        self._prepare_executor.shutdown(wait=True)

    async def embed(self, texts: Sequence[str]) -> Embedded:
        """Vectors for ``texts`` (already normalised), computed by the model."""
        if self._closing:
            raise ShuttingDown("the service is shutting down")
        unique = list(dict.fromkeys(texts))
        fresh = [t for t in unique if t not in self._inflight]
        if self.queued_items + len(fresh) > self._max_queue_items:
            self._metrics.overload_rejections.inc()
            raise Overloaded(
                f"queue full ({self.queued_items} items waiting, limit {self._max_queue_items}); retry later"
            )
        # No await between the check above and the puts below: admission is atomic.
        loop = asyncio.get_running_loop()
        now = time.perf_counter()
        jobs: dict[str, _Job] = {}
        for text in unique:
            job = self._inflight.get(text)
            if job is None:
                job = _Job(text, now, loop.create_future())
                self._inflight[text] = job
                self._queue.put_nowait(job)
            else:
                job.waiters += 1
                self._metrics.items_deduplicated.inc()
            jobs[text] = job
        try:
            # asyncio.wait (unlike gather) leaves the shared futures alone if this request is cancelled.
            await asyncio.wait([job.future for job in jobs.values()])
            results = {text: job.future.result() for text, job in jobs.items()}
        finally:
            for job in jobs.values():
                self._release(job)
        windows = {id(result.timing): result.timing for result in results.values()}
        ordered = [results[text] for text in texts]
        return Embedded(
            rows=Embeddings(
                np.stack([result.rows.vectors[result.row] for result in ordered]),
                np.array([result.rows.tokens[result.row] for result in ordered]),
                np.array([result.rows.truncated[result.row] for result in ordered]),
            ),
            # A job this request joined may have been queued before the request arrived.
            queue_seconds=max(
                result.timing.started - max(jobs[text].enqueued, now) for text, result in results.items()
            ),
            inference_seconds=sum(timing.inference_seconds for timing in windows.values()),
        )

    def _release(self, job: _Job) -> None:
        """One request stopped waiting for ``job``; nobody waiting any more = drop it."""
        job.waiters -= 1
        if job.waiters == 0 and not job.future.done():
            job.future.cancel()
        if job.future.done() and self._inflight.get(job.text) is job:
            del self._inflight[job.text]

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        windows: set[asyncio.Task[None]] = set()

        def window_done(task: asyncio.Task[None]) -> None:
            windows.discard(task)
            self._windows.release()

        while True:
            # A window is collected only when fewer than max(pipeline_windows, model_runners) are
            # prepared or running:
            # while they are, new items wait in the queue and the next window takes them all.
            await self._windows.acquire()
            jobs, stop = await self._collect()
            live = [job for job in jobs if not job.future.done()]
            if len(live) < len(jobs):
                self._metrics.items_dropped.inc(len(jobs) - len(live))
            if live:
                self._in_windows += len(live)
                task = loop.create_task(self._compute(loop, live), name="marc-window")
                windows.add(task)
                task.add_done_callback(window_done)
            else:
                self._windows.release()
            if stop:
                if windows:
                    await asyncio.wait(windows)
                return

    async def _collect(self) -> tuple[list[_Job], bool]:
        """One window of jobs, and whether the stop marker was reached."""
        first = await self._queue.get()
        if first is None:
            return [], True
        jobs = [first]
        if self._take_ready(jobs, self._max_batch_size):
            return jobs, True
        deadline = time.monotonic() + self._max_wait
        while len(jobs) < self._max_batch_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                async with asyncio.timeout(remaining):
                    job = await self._queue.get()
            except TimeoutError:
                break
            if job is None:
                return jobs, True
            jobs.append(job)
            if self._take_ready(jobs, self._max_batch_size):
                return jobs, True
        return jobs, self._take_ready(jobs, self._window_items)

    def _take_ready(self, jobs: list[_Job], limit: int) -> bool:
        """Move already-queued jobs into ``jobs`` up to ``limit``; True if the stop marker was taken."""
        while len(jobs) < limit and not self._queue.empty():
            job = self._queue.get_nowait()
            if job is None:
                return True
            jobs.append(job)
        return False

    def _run(self, loop: asyncio.AbstractEventLoop, prepared: Any, items: int) -> tuple[float, EncodedTexts]:
        """In the model's thread: when the window really went to the model, and its result."""
        loop.call_soon_threadsafe(self._started, items)
        return time.perf_counter(), self._encoder.run(prepared)

    def _started(self, items: int) -> None:
        self._in_windows -= items

    async def _compute(self, loop: asyncio.AbstractEventLoop, jobs: list[_Job]) -> None:
        try:
            try:
                prepared = await loop.run_in_executor(
                    self._prepare_executor,
                    self._encoder.prepare,
                    [job.text for job in jobs],
                    self._max_batch_size,
                )
            except BaseException:
                self._started(len(jobs))  # never reaches the model
                raise
            started, encoded = await loop.run_in_executor(
                self._executor, self._run, loop, prepared, len(jobs)
            )
        except Exception as exc:
            log.exception("inference failed for a window of %d items", len(jobs))
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(InferenceFailed(f"inference failed: {type(exc).__name__}"))
                self._forget(job)
            return
        timing = WindowTiming(started, sum(run.seconds for run in encoded.runs))
        for run in encoded.runs:
            self._metrics.batch_size.observe(run.items)
            self._metrics.inference_duration.observe(run.seconds)
        self._metrics.items_embedded.inc(len(jobs))
        for row, job in enumerate(jobs):
            if not job.future.done():
                job.future.set_result(_Result(encoded.rows, row, timing))
            self._forget(job)

    def _forget(self, job: _Job) -> None:
        if self._inflight.get(job.text) is job:
            del self._inflight[job.text]
