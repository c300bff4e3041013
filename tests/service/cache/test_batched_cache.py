"""Redis calls shared by concurrent requests (service/cache/batched.py), against a private redis-server
whose command counts tell how many round trips were made: reads of one loop turn as one MGET, writes
as one pipeline per flush, the write queue past its bound, writes that outlive a paused Redis, a
queued value read back at once, and a dead Redis failing every caller of a shared read (and reported
as a lost connection)."""

from __future__ import annotations

import asyncio
import gc
import time
import weakref
from collections.abc import Iterator

import pytest

from service.cache.batched import BatchedCache
from service.cache.stores import CacheUnavailable, RedisCache
from tests.support.redis_server import RedisProcess


class Recorder:
    def __init__(self) -> None:
        self.writes: list[str] = []
        self.lost: list[tuple[str, list[str]]] = []
        self.disconnected = 0

    def on_write(self, result: str) -> None:
        self.writes.append(result)

    def on_lost(self, keys: list[str], reason: str) -> None:
        self.lost.append((reason, keys))

    def on_disconnected(self) -> None:
        self.disconnected += 1


@pytest.fixture
def redis_process() -> Iterator[RedisProcess]:
    with RedisProcess() as process:
        yield process


def _calls(process: RedisProcess, command: str) -> int:
    stats = process.client.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


def _batched(
    process: RedisProcess, *, max_pending: int = 1000, timeout: float = 5.0
) -> tuple[BatchedCache, Recorder]:
    recorder = Recorder()
    redis = RedisCache(process.url, ttl_seconds=60, timeout_seconds=timeout, retry_seconds=1.0)
    cache = BatchedCache(
        redis,
        max_pending=max_pending,
        on_write=recorder.on_write,
        on_lost=recorder.on_lost,
        on_disconnected=recorder.on_disconnected,
    )
    return cache, recorder


def test_reads_of_one_loop_turn_are_one_mget_and_each_caller_gets_its_own_keys(
    redis_process: RedisProcess,
) -> None:
    redis_process.client.mset({f"k{i}": f"v{i}".encode() for i in range(0, 200, 2)})  # even keys exist

    async def scenario() -> list[list[bytes | None]]:
        cache, _ = _batched(redis_process)
        try:
            # 100 callers at once, each with two keys (one present, one absent), some keys shared.
            return await asyncio.gather(*(cache.get_many([f"k{2 * i}", f"k{2 * i + 1}"]) for i in range(100)))
        finally:
            await cache.close()

    before = _calls(redis_process, "mget")
    answers = asyncio.run(scenario())
    assert _calls(redis_process, "mget") - before == 1
    assert answers == [[f"v{2 * i}".encode(), None] for i in range(100)]


def test_writes_are_queued_flushed_as_one_pipeline_and_read_back_at_once(redis_process: RedisProcess) -> None:
    async def scenario() -> tuple[list[bytes | None], int]:
        cache, recorder = _batched(redis_process)
        try:
            for i in range(100):  # 100 requests' writes in one turn: none of them waits
                await cache.set_many([(f"w{i}", b"x%d" % i), (f"id{i}", b"x%d" % i)])
            queued = cache.pending_writes
            read_back = await cache.get_many(["w7", "id99"])  # before the flush: from the queue
            await cache.drain()
            return [*read_back, queued], len(recorder.writes)
        finally:
            await cache.close()

    (w7, id99, queued), round_trips = asyncio.run(scenario())
    assert (w7, id99, queued) == (b"x7", b"x99", 200)
    assert round_trips == 1
    assert redis_process.client.get("w42") == b"x42" and redis_process.client.ttl("id0") > 0


def test_a_key_queued_twice_is_written_once_with_its_latest_value(redis_process: RedisProcess) -> None:
    async def scenario() -> None:
        cache, _ = _batched(redis_process)
        try:
            await cache.set_many([("sku-1", b"old"), ("t1", b"v")])
            await cache.set_many([("sku-1", b"new")])
            assert cache.pending_writes == 2
            await cache.drain()
        finally:
            await cache.close()

    asyncio.run(scenario())
    assert redis_process.client.get("sku-1") == b"new"


def test_writes_outlive_a_paused_redis_and_the_queue_sheds_its_oldest_past_its_bound(
    redis_process: RedisProcess,
) -> None:
    bound = 10

    async def scenario() -> tuple[float, Recorder]:
        cache, recorder = _batched(redis_process, max_pending=bound, timeout=5.0)
        try:
            redis_process.pause()
            started = time.monotonic()
            await cache.set_many([("first", b"1")])
            await asyncio.sleep(0.05)  # its flush is on its way, stuck on the paused server
            for i in range(3 * bound):  # 3x the bound while it is stuck: the oldest 20 are shed
                await cache.set_many([(f"q{i}", b"%d" % i)])
            queued_in = time.monotonic() - started  # no caller waited for Redis
            await asyncio.sleep(0.5)
            redis_process.resume()
            await cache.drain()
            return queued_in, recorder
        finally:
            await cache.close()

    queued_in, recorder = asyncio.run(scenario())
    assert queued_in < 0.5
    assert recorder.lost == [("dropped", [f"q{i}"]) for i in range(2 * bound)]
    assert recorder.writes == ["ok", "ok"]  # the stuck call, then the queue in one
    client = redis_process.client
    assert client.get("first") == b"1"
    assert [client.get(f"q{i}") for i in range(3 * bound)] == [None] * (2 * bound) + [
        b"%d" % i for i in range(2 * bound, 3 * bound)
    ]


def test_a_dead_redis_fails_every_caller_of_a_shared_read_and_counts_lost_writes(
    redis_process: RedisProcess,
) -> None:
    async def scenario() -> tuple[list[object], Recorder]:
        cache, recorder = _batched(redis_process, timeout=0.5)
        try:
            redis_process.kill()
            answers = await asyncio.gather(
                *(cache.get_many([f"k{i}"]) for i in range(5)), return_exceptions=True
            )
            await cache.set_many([("a", b"1"), ("b", b"2")])
            await cache.drain()
            return answers, recorder
        finally:
            await cache.close()

    answers, recorder = asyncio.run(scenario())
    assert all(isinstance(answer, CacheUnavailable) for answer in answers)
    assert recorder.writes == ["error"] and recorder.lost == [("error", ["a", "b"])]
    # The shared read found the connection lost (the write after it was skipped by the open breaker).
    assert recorder.disconnected == 1


def test_after_a_redis_restart_writes_land_again_and_the_script_is_loaded_anew(
    redis_process: RedisProcess,
) -> None:
    """A restarted Redis has forgotten the write script (NOSCRIPT) and closed every pooled connection:
    the calls right after it fail and are counted, then a probe finds it back and writes land."""

    async def scenario() -> Recorder:
        cache, recorder = _batched(redis_process, timeout=1.0)
        try:
            await cache.set_many([("before", b"1")])
            await cache.drain()
            redis_process.stop()
            redis_process.start()  # same port, empty: no keys, no scripts
            deadline = time.monotonic() + 10
            while redis_process.client.get("after") is None and time.monotonic() < deadline:
                await cache.set_many([("after", b"2")])
                await cache.drain()
                await asyncio.sleep(0.2)
            return recorder
        finally:
            await cache.close()

    recorder = asyncio.run(scenario())
    assert redis_process.client.get("after") == b"2" and redis_process.client.get("before") is None
    assert recorder.writes[0] == "ok" and recorder.writes[-1] == "ok"


def test_a_failed_shared_read_leaves_no_cycle_that_keeps_its_callers_alive(
    redis_process: RedisProcess,
) -> None:
    """A request whose cache read failed must be freed when it ends, not at the cyclic collector's
    next full pass: what its frames hold (the served model among them) would outlive a reload."""

    class Held:  # stands for what a request's frame holds (the model it leased)
        pass

    async def caller(cache: BatchedCache, held: Held, key: str) -> str:
        try:
            await cache.get_many([key])
        except CacheUnavailable as exc:
            return f"{type(exc).__name__} {held}"
        return "read"

    async def scenario() -> tuple[list[str], list[weakref.ref[Held]]]:
        cache, _ = _batched(redis_process, timeout=0.5)
        try:
            redis_process.kill()
            held = [Held() for _ in range(4)]
            refs = [weakref.ref(h) for h in held]
            answers = await asyncio.gather(*(caller(cache, h, f"k{i}") for i, h in enumerate(held)))
            del held
            await asyncio.sleep(0)
            return answers, refs
        finally:
            await cache.close()

    gc.disable()  # only reference counting may free them
    try:
        answers, refs = asyncio.run(scenario())
        alive = sum(ref() is not None for ref in refs)
    finally:
        gc.enable()
    assert all(answer.startswith("Cache") for answer in answers), answers  # every read failed
    assert alive == 0, f"{alive} of 4 callers' frames kept alive by a failed read's traceback"
