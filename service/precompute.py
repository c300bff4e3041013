"""`marc precompute`: embed a whole catalogue (or one shard of it) offline into Redis (text and id keys,
exactly as the service writes them) and/or a vector file.

It is the service's embed flow (`service.flow`) on chunks of the catalogue, with the encoder in big
length-sorted batches instead of the micro-batcher, and a cache failure that stops the job instead of
being served around. Resumable: items whose text key is already in Redis are not recomputed (their
stored vector is reused for the file and for a missing id key), so a re-run after an interruption only
computes what is left. With ``--shard i/N`` only the items of shard i are embedded (`service.shards`),
so N workers split one catalogue without coordinating.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from records.jsonl import iter_items_jsonl
from service.cache.keys import KeySpace
from service.cache.stores import CacheUnavailable, RedisCache
from service.cache.values import ValueCodec
from service.flow import EmbedFlow
from service.metrics import Metrics
from service.model.batcher import Embedded
from service.model.encoder import OnnxEncoder
from service.shards import Shard
from service.vector_files import VectorWriter

log = logging.getLogger(__name__)


class ModelRunFailed(Exception):
    """The model failed on one chunk (ONNX Runtime error, out of GPU memory): its items count as
    failed, the job goes on with the next chunk."""


@dataclass(frozen=True)
class ShardCount:
    catalogue: int
    """Items in the whole file."""
    in_shard: int


@dataclass(frozen=True)
class PrecomputeReport:
    items: int
    """Items of the shard that were reached (all of them unless the cache failed)."""
    computed: int
    reused: int
    """Already cached under the artifact's fingerprint: not recomputed."""
    failed: int
    """In chunks the model or the cache failed on: nothing stored for them."""
    seconds: float
    cache_error: str | None = None
    """Why the job stopped early (the cache failed), None if it went through the whole shard."""


def count_shard(path: Path, shard: Shard) -> ShardCount:
    """Reads (and so validates) the whole catalogue before anything is computed: a bad line stops
    the job with `DataError` before a model run, and the progress bar knows its total."""
    catalogue = in_shard = 0
    for item_id, _ in iter_items_jsonl(path):
        catalogue += 1
        in_shard += shard.holds(item_id)
    return ShardCount(catalogue, in_shard)


def iter_shard(path: Path, shard: Shard) -> Iterator[tuple[str, str]]:
    """(item_id, text) of the items of ``shard`` in an items.jsonl file (validated line by line)."""
    return ((item_id, text) for item_id, text in iter_items_jsonl(path) if shard.holds(item_id))


async def precompute(
    encoder: OnnxEncoder,
    items: Iterator[tuple[str, str]],
    *,
    keys: KeySpace,
    codec: ValueCodec,
    redis: RedisCache | None,
    writer: VectorWriter | None,
    batch_size: int,
    chunk_items: int,
    total: int | None = None,
    description: str = "precompute",
) -> PrecomputeReport:
    async def compute(texts: list[str]) -> Embedded:
        try:
            encoded = await asyncio.to_thread(encoder.embed, texts, batch_size)
        except Exception as exc:  # whatever the runtime raises; the caller counts the chunk as failed
            raise ModelRunFailed(f"{type(exc).__name__}: {exc}") from exc
        return Embedded(encoded.rows, 0.0, sum(run.seconds for run in encoded.runs))

    # Metrics of its own: a batch job exposes none, the flow counts into them all the same.
    flow = EmbedFlow(
        keys, redis, compute, codec, Metrics().for_model(encoder.artifact.name), cache_failures="raise"
    )
    started = time.perf_counter()
    computed = reused = failed = seen = 0
    cache_error = None
    with tqdm(total=total, unit="item", desc=description) as progress:
        while chunk := list(itertools.islice(items, chunk_items)):
            ids = [item_id for item_id, _ in chunk]
            seen += len(chunk)
            try:
                outcome = await flow.embed([text for _, text in chunk], ids)
            except ModelRunFailed as exc:
                log.error("model run failed on %d items (%s ... %s): %s", len(chunk), ids[0], ids[-1], exc)
                failed += len(chunk)
            except CacheUnavailable as exc:
                # A batch job stops rather than compute a catalogue it cannot store; a re-run resumes.
                failed += len(chunk)
                cache_error = str(exc)
                break
            else:
                if writer is not None:
                    # The file gets what the service serves from the cache (float16 rounding included).
                    writer.write(ids, outcome.rows.vectors)
                computed += len(chunk) - outcome.cache_hits
                reused += outcome.cache_hits
            progress.update(len(chunk))
            progress.set_postfix(computed=computed, cached=reused, failed=failed, refresh=False)
    return PrecomputeReport(seen, computed, reused, failed, time.perf_counter() - started, cache_error)
