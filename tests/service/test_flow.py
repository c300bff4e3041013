"""The embed flow on its own: the real in-process cache, a fake compute that records what reaches
"the model", and a fake cache (our `Cache` protocol) that fails - read, compute each new text once,
write back, all-hits answers, id keys, strict truncation, and the two cache-failure policies."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np
import pytest

from service.cache.keys import KeySpace
from service.cache.stores import CacheUnavailable, LruCache
from service.cache.values import ValueCodec
from service.embeddings import Embeddings
from service.flow import EmbedFlow, TruncatedTexts
from service.metrics import Metrics
from service.model.batcher import Embedded

DIM = 4


class FakeModel:
    """Vector of a text: its length in every component; a text of more than 5 words is 'truncated'."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    async def __call__(self, texts: list[str]) -> Embedded:
        self.calls.append(texts)
        words = np.array([len(t.split()) for t in texts])
        vectors = np.repeat(np.array([[len(t)] for t in texts], dtype=np.float32), DIM, axis=1) / 3
        return Embedded(Embeddings(vectors, np.minimum(words, 5), words > 5), 0.002, 0.001)


class BrokenCache:
    backend = "redis"

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        raise CacheUnavailable("redis is down")

    async def set_many(self, entries: Sequence[tuple[str, bytes]]) -> None:
        raise CacheUnavailable("redis is down")


def _flow(cache: object, model: FakeModel, **options: object) -> tuple[EmbedFlow, Metrics]:
    metrics = Metrics()
    codec = ValueCodec(options.pop("dtype", "float32"), DIM)  # type: ignore[arg-type]
    flow = EmbedFlow(KeySpace("t", "f" * 64), cache, model, codec, metrics.for_model("m"), **options)  # type: ignore[arg-type]
    return flow, metrics


def _count(metrics: Metrics, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` (e.g. over every cache tier)."""
    return sum(
        sample.value
        for family in metrics.registry.collect()
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def test_new_texts_are_computed_once_written_back_and_then_served_from_the_cache() -> None:
    async def scenario() -> dict[str, object]:
        model, cache = FakeModel(), LruCache(100, 0)
        flow, metrics = _flow(cache, model)
        first = await flow.embed(["oak desk", "  oak desk ", "linen shirt"], ["sku-1", None, "sku-2"])
        again = await flow.embed(["oak desk", "linen shirt"], ["sku-1", "sku-2"])
        found = await flow.lookup(["sku-2", "sku-9"])
        return {
            "first": first,
            "again": again,
            "calls": model.calls,
            "keys": len(cache),
            "found": found,
            "hits": _count(metrics, "marc_cache_requests_total", result="hit"),
        }

    seen = asyncio.run(scenario())
    first, again = seen["first"], seen["again"]
    assert seen["calls"] == [["oak desk", "linen shirt"]]  # normalised, each new text once
    assert first.cached == [False, False, False]  # type: ignore[attr-defined]
    np.testing.assert_array_equal(first.rows.vectors[0], first.rows.vectors[1])  # type: ignore[attr-defined]
    assert first.queue_seconds == 0.002 and first.inference_seconds == 0.001  # type: ignore[attr-defined]
    assert seen["keys"] == 4  # two text keys, two id keys
    assert again.cached == [True, True] and again.cache_hits == 2 and again.all_hits
    np.testing.assert_array_equal(again.rows.vectors, first.rows.vectors[[0, 2]])  # type: ignore[attr-defined]
    assert list(seen["found"]) == ["sku-2"] and seen["hits"] == 2 + 1  # type: ignore[arg-type]


def test_an_id_given_a_new_text_is_not_all_hits_and_is_rewritten() -> None:
    async def scenario() -> tuple[object, object, list[list[str]]]:
        model = FakeModel()
        flow, _ = _flow(LruCache(100, 0), model)
        await flow.embed(["oak desk", "walnut shelf"], ["sku-1", None])
        moved = await flow.embed(["walnut shelf"], ["sku-1"])  # text cached, id points elsewhere
        found = await flow.lookup(["sku-1"])
        return moved, found, model.calls

    moved, found, calls = asyncio.run(scenario())
    assert moved.cached == [True] and calls == [["oak desk", "walnut shelf"]]  # nothing recomputed
    np.testing.assert_array_equal(found["sku-1"], moved.rows.vectors[0])  # type: ignore[index, attr-defined]


def test_float16_values_are_served_rounded_whether_cached_or_computed() -> None:
    async def scenario() -> tuple[np.ndarray, np.ndarray]:
        flow, _ = _flow(LruCache(100, 0), FakeModel(), dtype="float16")
        computed = await flow.embed(["a text of an odd length"])
        cached = await flow.embed(["a text of an odd length"])
        return computed.rows.vectors, cached.rows.vectors

    computed, cached = asyncio.run(scenario())
    np.testing.assert_array_equal(computed, cached)
    np.testing.assert_array_equal(computed, computed.astype(np.float16).astype(np.float32))


def test_strict_truncation_refuses_before_anything_is_written() -> None:
    async def scenario() -> tuple[list[int], int, float]:
        cache = LruCache(100, 0)
        flow, metrics = _flow(cache, FakeModel(), reject_truncated=True)
        with pytest.raises(TruncatedTexts) as refused:
            await flow.embed(["short", "one two three four five six seven"])
        return refused.value.rows, len(cache), _count(metrics, "marc_items_truncated_total", model="m")

    rows, stored, counted = asyncio.run(scenario())
    assert rows == [1] and stored == 0 and counted == 0


def test_truncated_items_are_counted_when_served() -> None:
    async def scenario() -> tuple[list[bool], float]:
        flow, metrics = _flow(LruCache(100, 0), FakeModel())
        outcome = await flow.embed(["short", "one two three four five six seven"])
        await flow.embed(["one two three four five six seven"])  # from the cache: counted again
        return outcome.rows.truncated.tolist(), _count(metrics, "marc_items_truncated_total", model="m")

    truncated, counted = asyncio.run(scenario())
    assert truncated == [False, True] and counted == 2


def test_a_failing_cache_is_served_around_in_the_service_and_stops_a_batch_job() -> None:
    async def serve() -> tuple[list[bool], float]:
        model = FakeModel()
        flow, metrics = _flow(BrokenCache(), model)
        outcome = await flow.embed(["still answered"])
        return outcome.cached, _count(metrics, "marc_cache_requests_total", result="error")

    async def batch_job() -> None:
        flow, _ = _flow(BrokenCache(), FakeModel(), cache_failures="raise")
        await flow.embed(["never computed"])

    cached, errors = asyncio.run(serve())
    assert cached == [False] and errors == 1
    with pytest.raises(CacheUnavailable):
        asyncio.run(batch_job())


def test_values_carry_the_token_trailer_and_reject_other_lengths() -> None:
    codec = ValueCodec("float32", DIM)
    rows = Embeddings(
        np.arange(8, dtype=np.float32).reshape(2, DIM), np.array([7, 64]), np.array([False, True])
    )
    values = codec.encode(rows)
    decoded = codec.decode(values)
    assert [len(v) for v in values] == [4 * DIM + 4] * 2 and codec.value_bytes == 4 * DIM + 4
    np.testing.assert_array_equal(decoded.vectors, rows.vectors)
    assert decoded.tokens.tolist() == [7, 64] and decoded.truncated.tolist() == [False, True]
    assert not codec.valid(values[0][:-4]) and not codec.valid(None) and codec.valid(values[1])


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_a_few_rows_are_encoded_to_the_same_bytes_as_many(dtype: str) -> None:
    """Up to FEW_ROWS rows skip the record array: the values must be the bytes of the documented layout
    all the same (vector, then tokens and flags as little-endian uint16)."""
    from service.cache.values import FEW_ROWS

    codec = ValueCodec(dtype, DIM)  # type: ignore[arg-type]
    rows = Embeddings(
        np.arange(2 * FEW_ROWS * DIM, dtype=np.float32).reshape(2 * FEW_ROWS, DIM) / 7,
        np.arange(2 * FEW_ROWS) + 300,
        np.arange(2 * FEW_ROWS) % 3 == 0,
    )
    many = codec.encode(rows)  # more than FEW_ROWS: the record array
    few = [
        value
        for start in range(0, len(many), FEW_ROWS)
        for value in codec.encode(rows.take(list(range(start, start + FEW_ROWS))))
    ]
    assert few == many
    assert many[0][-4:] == (300).to_bytes(2, "little") + (1).to_bytes(2, "little")  # tokens, truncated flag
