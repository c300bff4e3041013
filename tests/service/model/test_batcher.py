"""The micro-batcher on its own, with a fake `TextEncoder` that records what it is asked to embed:
merging concurrent requests, computing a text once, all-or-nothing admission, dropping work nobody
waits for, failures of a run, and stopping."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import numpy as np
import pytest

from service.embeddings import Embeddings
from service.metrics import Metrics
from service.model.batcher import InferenceFailed, MicroBatcher, Overloaded, ShuttingDown
from service.model.encoder import EncodedTexts, RunStats


class FakeEncoder:
    """Vector of a text = [its length, its number of words]; ``gate`` holds runs until set."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[list[str]] = []
        self.prepared: list[list[str]] = []
        self.fail = fail
        self.gate = threading.Event()
        self.gate.set()

    def prepare(
        self, texts: Sequence[str], max_batch_size: int, max_batch_tokens: int = 0
    ) -> tuple[list[str], int]:
        self.prepared.append(list(texts))
        return list(texts), max_batch_size

    def run(self, prepared: tuple[list[str], int]) -> EncodedTexts:
        return self.embed(*prepared)

    def embed(self, texts: Sequence[str], max_batch_size: int) -> EncodedTexts:
        self.gate.wait(10)
        self.calls.append(list(texts))
        if self.fail:
            raise RuntimeError("the model broke")
        vectors = np.array([[len(t), len(t.split())] for t in texts], dtype=np.float32)
        tokens = np.array([len(t.split()) for t in texts])
        rows = Embeddings(vectors, tokens, tokens > 3)
        return EncodedTexts(rows, [RunStats(len(texts), int(tokens.max()), 0.001, 0.001)])


def _batcher(encoder: FakeEncoder, metrics: Metrics, **limits: float) -> MicroBatcher:
    options = {"max_batch_size": 8, "max_wait_ms": 50.0, "max_queue_items": 16, **limits}
    batcher = MicroBatcher(encoder, metrics.for_model("m"), **options)  # type: ignore[arg-type]
    batcher.start()
    return batcher


def test_concurrent_requests_share_runs_and_get_their_own_rows_in_order() -> None:
    async def scenario() -> tuple[list, FakeEncoder]:
        encoder = FakeEncoder()
        batcher = _batcher(encoder, Metrics())
        results = await asyncio.gather(
            batcher.embed(["a b", "c"]), batcher.embed(["d e f g h"]), batcher.embed(["c", "a b"])
        )
        await batcher.stop()
        return results, encoder

    (first, second, third), encoder = asyncio.run(scenario())
    assert len(encoder.calls) == 1 and sorted(encoder.calls[0]) == ["a b", "c", "d e f g h"]  # once each
    np.testing.assert_array_equal(first.rows.vectors, [[3, 2], [1, 1]])
    np.testing.assert_array_equal(third.rows.vectors, [[1, 1], [3, 2]])
    assert second.rows.tokens.tolist() == [5] and second.rows.truncated.tolist() == [True]
    assert first.inference_seconds == pytest.approx(0.001) and first.queue_seconds >= 0


def test_a_request_that_does_not_fit_is_refused_whole_and_the_next_one_fits() -> None:
    async def scenario() -> tuple[int, int, float | None]:
        encoder, metrics = FakeEncoder(), Metrics()
        encoder.gate.clear()  # runs wait, so the queue fills up
        batcher = _batcher(encoder, metrics, max_batch_size=2, max_queue_items=4)
        running = asyncio.ensure_future(batcher.embed(["r1", "r2"]))
        await asyncio.sleep(0.1)  # taken from the queue: its run waits at the gate
        queued = asyncio.ensure_future(batcher.embed(["q1", "q2", "q3"]))
        await asyncio.sleep(0)
        with pytest.raises(Overloaded, match="limit 4"):
            await batcher.embed(["n1", "n2"])  # 3 waiting + 2 > 4
        depth_after_refusal = batcher.queued_items
        fits = asyncio.ensure_future(batcher.embed(["n1", "r1"]))  # r1 is running already: joins it
        await asyncio.sleep(0)
        depth = batcher.queued_items
        encoder.gate.set()
        await asyncio.gather(running, queued, fits)
        await batcher.stop()
        return (
            depth_after_refusal,
            depth,
            metrics.registry.get_sample_value("marc_overload_rejections_total", {"model": "m"}),
        )

    depth_after_refusal, depth, rejections = asyncio.run(scenario())
    assert depth_after_refusal == 3  # nothing of the refused request was queued
    assert depth == 4 and rejections == 1


def test_the_next_window_is_prepared_while_the_model_runs_and_no_more() -> None:
    async def scenario() -> tuple[list[list[str]], list[list[str]], int, int, list[list[str]]]:
        encoder = FakeEncoder()
        encoder.gate.clear()  # the first run waits at the gate
        batcher = _batcher(encoder, Metrics(), max_batch_size=2, max_wait_ms=1.0, pipeline_windows=2)
        first = asyncio.ensure_future(batcher.embed(["a1", "a2"]))
        await asyncio.sleep(0.2)  # the first window is running (held at the gate)
        second = asyncio.ensure_future(batcher.embed(["b1", "b2"]))
        await asyncio.sleep(0.2)
        third = asyncio.ensure_future(batcher.embed(["c1"]))
        await asyncio.sleep(0.2)
        prepared, calls = [list(p) for p in encoder.prepared], [list(c) for c in encoder.calls]
        waiting, queue_only = batcher.queued_items, len(batcher._pending)
        encoder.gate.set()
        await asyncio.gather(first, second, third)
        await batcher.stop()
        return prepared, calls, waiting, queue_only, encoder.calls

    prepared, calls, waiting, queue_only, all_calls = asyncio.run(scenario())
    # While the model ran window a, window b was collected and prepared, and nothing else: c waits
    # in the queue until a window is done (pipeline_windows = 2).
    assert calls == [] and prepared == [["a1", "a2"], ["b1", "b2"]]
    assert waiting == 3 and queue_only == 1  # b (prepared, waiting for the model) + c (queued)
    assert all_calls == [["a1", "a2"], ["b1", "b2"], ["c1"]]


@pytest.mark.parametrize("runners", [1, 2])
def test_model_runners_bound_how_many_runs_overlap(runners: int) -> None:
    """Each run waits (up to 1 s) for a second run to be in the model at the same time: with two
    runners both windows get there together; with one, runs never overlap."""

    class PairedEncoder(FakeEncoder):
        def __init__(self) -> None:
            super().__init__()
            self.together = threading.Barrier(2, timeout=1.0)
            self.overlapped: list[bool] = []

        def run(self, prepared: tuple[list[str], int]) -> EncodedTexts:
            try:
                self.together.wait()
                self.overlapped.append(True)
            except threading.BrokenBarrierError:
                self.overlapped.append(False)
            return super().run(prepared)

    async def scenario() -> list[bool]:
        encoder = PairedEncoder()
        batcher = _batcher(encoder, Metrics(), max_batch_size=2, max_wait_ms=1.0, model_runners=runners)
        first = asyncio.ensure_future(batcher.embed(["a1", "a2"]))
        await asyncio.sleep(0.1)  # the first window is in the model: the second is another window
        await asyncio.gather(first, batcher.embed(["b1", "b2"]))
        await batcher.stop()
        return encoder.overlapped

    overlapped = asyncio.run(scenario())
    assert len(overlapped) == 2
    assert all(overlapped) if runners == 2 else not any(overlapped)


def test_work_nobody_waits_for_is_dropped_before_the_model() -> None:
    async def scenario() -> tuple[FakeEncoder, float | None]:
        encoder, metrics = FakeEncoder(), Metrics()
        batcher = _batcher(encoder, metrics, max_wait_ms=300)
        request = asyncio.ensure_future(batcher.embed(["nobody reads this"]))
        await asyncio.sleep(0.05)
        request.cancel()  # the client went away while the item waited for its window
        await asyncio.gather(request, return_exceptions=True)
        kept = await batcher.embed(["somebody reads this"])
        assert kept.rows.vectors.shape == (1, 2)
        await batcher.stop()
        return encoder, metrics.registry.get_sample_value("marc_items_dropped_total", {"model": "m"})

    encoder, dropped = asyncio.run(scenario())
    assert encoder.calls == [["somebody reads this"]] and dropped == 1


def test_a_failing_run_fails_its_requests_and_the_batcher_goes_on() -> None:
    async def scenario() -> tuple[list[BaseException | object], object]:
        encoder = FakeEncoder(fail=True)
        batcher = _batcher(encoder, Metrics())
        failed = await asyncio.gather(batcher.embed(["a"]), batcher.embed(["b"]), return_exceptions=True)
        encoder.fail = False
        later = await batcher.embed(["c d"])
        await batcher.stop()
        return failed, later

    failed, later = asyncio.run(scenario())
    assert all(isinstance(result, InferenceFailed) for result in failed)
    assert "the model broke" not in str(failed[0])  # the type is logged, the answer says no more
    assert later.rows.vectors.tolist() == [[3, 2]]  # type: ignore[attr-defined]


def test_stop_finishes_queued_work_then_refuses_new_work() -> None:
    async def scenario() -> tuple[object, str]:
        encoder = FakeEncoder()
        batcher = _batcher(encoder, Metrics(), max_wait_ms=200)
        queued = asyncio.ensure_future(batcher.embed(["queued before stop"]))
        await asyncio.sleep(0.01)
        await batcher.stop()
        try:
            await batcher.embed(["after stop"])
        except ShuttingDown as exc:
            return await queued, str(exc)
        return await queued, "accepted"

    done, refusal = asyncio.run(scenario())
    assert done.rows.vectors.shape == (1, 2)  # type: ignore[attr-defined]
    assert "shutting down" in refusal


def test_a_partial_window_always_runs_once_max_wait_has_passed_on_uvloop() -> None:
    """The service's loop (uvloop) may run a timer while its clock still reads a hair before the
    timer's deadline: a window that is not full must still go to the model when its wait is over,
    also when no other request comes (the last request of a burst)."""
    import uvloop

    async def scenario() -> int:
        batcher = _batcher(FakeEncoder(), Metrics(), max_wait_ms=1.0)
        answered = 0
        for i in range(1000):  # one request at a time: every window is partial and ends on its timer
            await asyncio.wait_for(batcher.embed([f"alone {i}"]), timeout=5)
            answered += 1
        await batcher.stop()
        return answered

    assert uvloop.run(scenario()) == 1000
