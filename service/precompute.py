"""`marc precompute`: embed a whole catalogue offline into Redis (text and id keys, exactly as the
service writes them) and/or a vector file.

It is the service's embed flow (`service.flow`) on chunks of the catalogue, with the encoder in big
length-sorted batches instead of the micro-batcher, and a cache failure that stops the job instead of
being served around. Resumable: items whose text key is already in Redis are not recomputed (their
stored vector is reused for the file and for a missing id key), so a re-run after an interruption only
computes what is left.
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
from service.cache.stores import RedisCache
from service.cache.values import ValueCodec
from service.flow import EmbedFlow
from service.metrics import Metrics
from service.model.batcher import Embedded
from service.model.encoder import OnnxEncoder
from service.vector_files import VectorWriter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrecomputeReport:
    items: int
    computed: int
    reused: int
    seconds: float


def count_lines(path: Path) -> int:
    with path.open("rb") as fh:
        return sum(1 for line in fh if line.strip())


def iter_items(path: Path) -> Iterator[tuple[str, str]]:
    """(item_id, text) from an items.jsonl file (validated line by line; torch-free)."""
    return iter_items_jsonl(path)


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
) -> PrecomputeReport:
    async def compute(texts: list[str]) -> Embedded:
        encoded = await asyncio.to_thread(encoder.embed, texts, batch_size)
        return Embedded(encoded.rows, 0.0, sum(run.seconds for run in encoded.runs))

    # Metrics of its own: a batch job exposes none, the flow counts into them all the same.
    flow = EmbedFlow(
        keys, redis, compute, codec, Metrics().for_model(encoder.artifact.name), cache_failures="raise"
    )
    started = time.perf_counter()
    computed = reused = seen = 0
    with tqdm(total=total, unit="item", desc="precompute") as progress:
        while chunk := list(itertools.islice(items, chunk_items)):
            ids = [item_id for item_id, _ in chunk]
            outcome = await flow.embed([text for _, text in chunk], ids)
            if writer is not None:
                # The file gets what the service serves from the cache (float16 rounding included).
                writer.write(ids, outcome.rows.vectors)
            computed += len(chunk) - outcome.cache_hits
            reused += outcome.cache_hits
            seen += len(chunk)
            progress.update(len(chunk))
            progress.set_postfix(computed=computed, reused=reused)
    return PrecomputeReport(seen, computed, reused, time.perf_counter() - started)
