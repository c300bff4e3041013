"""`marc precompute --shard i/N` as a cluster runs it: shard specs, the stable item -> shard hash, N
shards of the real CLI at once against a real Redis (every item stored exactly once, equal to what
`/v1/embed` answers), resuming, and the exit codes docs/operations.md and `--help` document."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from loadtest.processes import free_port
from service.cache.keys import ID_KIND, TEXT_KIND, KeySpace, parse_key
from service.cache.values import ValueCodec
from service.model.encoder import EncodedTexts, OnnxEncoder, load_encoder
from service.precompute import PrecomputeReport, precompute
from service.shards import Shard, shard_of
from tests.support.precompute import marc_command, run_shards, write_items
from tests.support.redis_server import RedisProcess, unique_prefix
from tests.support.reference import served_fingerprint
from tests.support.servers import LiveServer, command_environment

COLOURS = ("red", "blue", "green", "black", "white")
THINGS = ("shoes", "jacket", "lamp", "sofa", "kettle", "scarf", "desk")
ITEMS = [(f"sku-{i:05d}", f"{COLOURS[i % 5]} {THINGS[i % 7]} model {i}") for i in range(300)]


@pytest.fixture
def redis_server() -> Iterator[RedisProcess]:
    with RedisProcess() as server:
        yield server  # type: ignore[misc]


def test_shard_specs_are_checked_and_the_hash_is_pinned() -> None:
    assert Shard.parse("2/5") == Shard(2, 5) and Shard.parse(" 0/1 ") == Shard(0, 1)
    for spec, says in [
        ("0/0", "at least 1"),
        ("3/2", "0..1"),
        ("2/2", "0..1"),
        ("-1/4", "0..3"),
        ("x", "expected i/N"),
        ("1/", "expected i/N"),
        ("1.5/4", "expected i/N"),
    ]:
        with pytest.raises(ValueError, match=r"--shard") as refused:
            Shard.parse(spec)
        assert says in str(refused.value) and repr(spec) in str(refused.value)
    # The documented hash: sha256 of the UTF-8 id, first 8 bytes big-endian, mod N. Pinned values: a
    # change here re-shards every running catalogue.
    assert int.from_bytes(bytes.fromhex("d4735e3a265e16ee"), "big") % 7 == shard_of("2", 7)
    assert [shard_of(f"sku-{i:05d}", 3) for i in range(8)] == [0, 1, 1, 0, 1, 0, 0, 0]
    sizes = Counter(shard_of(item_id, 3) for item_id, _ in ITEMS)
    assert sorted(sizes) == [0, 1, 2] and min(sizes.values()) > 70  # 300 items, roughly even


def test_bad_shard_specs_exit_2_naming_the_flag(tiny_artifact: Path, tmp_path: Path) -> None:
    items = write_items(tmp_path / "items.jsonl", ITEMS[:3])
    for spec in ("0/0", "3/2", "-1/4", "x"):
        done = subprocess.run(
            marc_command(
                "precompute", f"--shard={spec}", "--artifact", str(tiny_artifact), "--items", str(items)
            ),
            capture_output=True,
            text=True,
            env=command_environment(redis_url="redis://127.0.0.1:1/0"),
            check=False,
        )
        assert done.returncode == 2 and "--shard" in done.stderr and spec in done.stderr, done.stderr
    zero = subprocess.run(
        marc_command(
            "precompute", "--batch-size", "0", "--artifact", str(tiny_artifact), "--items", str(items)
        ),
        capture_output=True,
        text=True,
        env=command_environment(redis_url="redis://127.0.0.1:1/0"),
        check=False,
    )
    assert zero.returncode == 2 and "--batch-size" in zero.stderr, zero.stderr


@pytest.mark.slow
def test_three_shards_store_every_item_once_and_equal_to_the_served_vectors(
    tiny_artifact: Path, tmp_path: Path, redis_server: RedisProcess
) -> None:
    prefix = unique_prefix()
    items_file = write_items(tmp_path / "items.jsonl", ITEMS)
    args = ["--artifact", str(tiny_artifact), "--items", str(items_file), "--redis-url", redis_server.url]
    args += ["--cache-prefix", prefix, "--batch-size", "16", "--chunk-items", "32"]

    # Part of the catalogue is already there (as after an interrupted run, with another shard count).
    seeded = run_shards(2, args, indices=[0])[0]
    assert seeded.returncode == 0, seeded.stderr
    half = {item_id for item_id, _ in ITEMS if shard_of(item_id, 2) == 0}
    assert seeded.counts()["computed"] == len(half) == redis_server.key_count() // 2

    runs = run_shards(3, args)
    counts = [run.counts() for run in runs]
    for index, (run, count) in enumerate(zip(runs, counts, strict=True)):
        assert run.returncode == 0, run.stderr
        mine = [item_id for item_id, _ in ITEMS if shard_of(item_id, 3) == index]
        assert count["index"] == index and count["catalogue"] == len(ITEMS)
        assert count["in_shard"] == len(mine)
        assert count["cached"] == len(set(mine) & half)  # resumed: skipped and counted
        assert count["computed"] == len(set(mine) - half)
        assert count["failed"] == count["not_reached"] == 0
    assert sum(count["computed"] for count in counts) == len(ITEMS) - len(half)  # nothing twice

    # Every item exactly once: one id key per item, one text key per text, nothing else.
    keys = [key.decode() for key in redis_server.client.scan_iter(count=1000)]
    parts = [parse_key(prefix, key) for key in keys]
    assert None not in parts and len(keys) == 2 * len(ITEMS) == redis_server.key_count()
    assert {part.fingerprint for part in parts if part} == {served_fingerprint(tiny_artifact)[:16]}
    assert Counter(part.kind for part in parts if part) == {TEXT_KIND: len(ITEMS), ID_KIND: len(ITEMS)}
    space = KeySpace(prefix, served_fingerprint(tiny_artifact))
    stored_ids = {key.removeprefix(f"{space.namespace}:{ID_KIND}:") for key in keys if f":{ID_KIND}:" in key}
    assert stored_ids == {item_id for item_id, _ in ITEMS}

    # A re-run computes nothing.
    again = run_shards(3, args)
    assert all(run.returncode == 0 for run in again), [run.stderr for run in again]
    assert [run.counts()["cached"] for run in again] == [count["in_shard"] for count in counts]
    assert sum(run.counts()["computed"] for run in again) == 0
    assert redis_server.key_count() == 2 * len(ITEMS)

    # The stored vectors are what a live server on the same artifact computes (no Redis: its own model
    # runs, in its own batches): equal up to the float rounding of another batch shape and padding
    # (seen: 2.4e-7; tests/reliability/test_determinism.py bounds it for every variant).
    codec = ValueCodec("float32", 16)
    stored = codec.decode(redis_server.client.mget([space.id_key(item_id) for item_id, _ in ITEMS]))
    with LiveServer(artifact=tiny_artifact) as live, live.client() as client:
        served = []
        for start in range(0, len(ITEMS), 50):
            batch = [{"text": text} for _, text in ITEMS[start : start + 50]]
            answer = client.post("/v1/embed", json={"items": batch})
            assert answer.status_code == 200 and answer.headers["x-cache-hits"] == "0"
            served += [row["embedding"] for row in answer.json()["data"]]
        assert live.metric("marc_items_embedded_total") == len(ITEMS)
    np.testing.assert_allclose(stored.vectors, np.array(served, dtype=np.float32), rtol=0, atol=1e-5)


def test_redis_unreachable_exits_5_and_a_bad_catalogue_exits_3(tiny_artifact: Path, tmp_path: Path) -> None:
    items = write_items(tmp_path / "items.jsonl", ITEMS[:20])
    closed = f"redis://127.0.0.1:{free_port()}/0"
    common = ["--artifact", str(tiny_artifact), "--redis-url", closed]
    unreachable = run_shards(1, [*common, "--items", str(items)])[0]
    assert unreachable.returncode == 5, unreachable.stderr
    assert "redis" in unreachable.stderr and "re-run to resume" in unreachable.stderr
    counts = unreachable.counts()
    assert counts["computed"] == 0 and counts["failed"] + counts["not_reached"] == 20

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"item_id": "a", "text": "fine"}\n{"item_id": "b", "txt": "typo"}\n')
    catalogue = run_shards(1, [*common, "--items", str(bad)])[0]
    assert catalogue.returncode == 3 and "line 2" in catalogue.stderr and "'text'" in catalogue.stderr
    missing = run_shards(1, [*common, "--items", str(tmp_path / "nope.jsonl")])[0]
    assert missing.returncode == 3 and "nope.jsonl" in missing.stderr
    no_artifact = run_shards(1, [*common, "--items", str(items), "--artifact", str(tmp_path)])[0]
    assert no_artifact.returncode == 4 and str(tmp_path) in no_artifact.stderr


class FailsOnSomeTexts(OnnxEncoder):
    """The real encoder, except that a run containing a text with ``poison`` raises (as ONNX Runtime
    does when a GPU runs out of memory): a fault injected around the real model."""

    def embed(self, texts: Sequence[str], max_batch_size: int) -> EncodedTexts:
        if any("poison" in text for text in texts):
            raise RuntimeError("CUDA out of memory (injected)")
        return super().embed(texts, max_batch_size)


def test_a_failing_model_run_fails_only_its_chunk_and_a_rerun_retries_it(
    tiny_artifact: Path, redis_server: RedisProcess
) -> None:
    from service.cache.stores import RedisCache

    loaded = load_encoder(tiny_artifact)
    encoder = FailsOnSomeTexts(loaded.artifact, loaded._session, loaded.provider)
    items = list(ITEMS[:40])
    items[13] = (items[13][0], "poison pill")
    keys = KeySpace(unique_prefix(), encoder.artifact.fingerprint)
    codec = ValueCodec("float32", encoder.dim)

    async def run(catalogue: list[tuple[str, str]]) -> PrecomputeReport:
        redis = RedisCache(redis_server.url, ttl_seconds=0, timeout_seconds=5, retry_seconds=0.001)
        try:
            return await precompute(
                encoder,
                iter(catalogue),
                keys=keys,
                codec=codec,
                redis=redis,
                writer=None,
                batch_size=8,
                chunk_items=10,
            )
        finally:
            await redis.close()

    first = asyncio.run(run(items))
    assert (first.items, first.computed, first.reused, first.failed) == (40, 30, 0, 10)  # chunk 10-19
    assert first.cache_error is None and redis_server.key_count() == 60
    items[13] = (items[13][0], ITEMS[13][1])  # the cause fixed, the job re-run
    second = asyncio.run(run(items))
    assert (second.computed, second.reused, second.failed) == (10, 30, 0)
    assert redis_server.key_count() == 80


@pytest.mark.slow
def test_a_killed_shard_resumes_where_it_stopped(
    tiny_artifact: Path, tmp_path: Path, redis_server: RedisProcess
) -> None:
    """SIGKILL mid-run (a node lost, a pod evicted): what was written stays, the re-run computes only the
    rest and ends with every item stored once."""
    items = [(f"row-{i:05d}", f"catalogue row {i} in {COLOURS[i % 5]}") for i in range(6000)]
    items_file = write_items(tmp_path / "items.jsonl", items)
    args = ["--artifact", str(tiny_artifact), "--items", str(items_file), "--redis-url", redis_server.url]
    args += ["--batch-size", "32", "--chunk-items", "64"]
    process = subprocess.Popen(
        marc_command("precompute", "--shard", "1/2", *args),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=command_environment(),
    )
    try:
        while redis_server.key_count() == 0 and process.poll() is None:
            time.sleep(0.005)
        process.kill()
    finally:
        process.wait(30)
    stored_at_kill = redis_server.key_count()
    mine = [item_id for item_id, _ in items if shard_of(item_id, 2) == 1]
    assert process.returncode == -signal.SIGKILL, "the shard finished before it could be killed"
    assert 0 < stored_at_kill < 2 * len(mine)

    (rerun,) = run_shards(2, args, indices=[1])
    counts = rerun.counts()
    assert rerun.returncode == 0, rerun.stderr
    assert counts["in_shard"] == len(mine) and counts["failed"] == 0
    assert 0 < counts["cached"] < len(mine) and counts["cached"] + counts["computed"] == len(mine)
    # (a kill between a chunk's text and id writes leaves texts without ids: those count as cached)
    assert counts["cached"] >= stored_at_kill // 2
    assert redis_server.key_count() == 2 * len(mine)
