"""`marc precompute`: embed a whole catalogue offline, in length-sorted batches, into Redis (text and
id keys, exactly as the service writes them) and/or a vector file.

Resumable: items whose text key is already in Redis are not recomputed (their stored vector is
reused for the file and for a missing id key), so a re-run after an interruption only computes what
is left.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from records.jsonl import iter_items_jsonl
from service.cache import RedisCache
from service.cache_values import ValueCodec
from service.encoder import OnnxEncoder
from service.keys import KeySpace, normalise_text
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
    started = time.perf_counter()
    computed = reused = seen = 0
    with tqdm(total=total, unit="item", desc="precompute") as progress:
        while chunk := list(itertools.islice(items, chunk_items)):
            ids = [item_id for item_id, _ in chunk]
            texts = [normalise_text(text) for _, text in chunk]
            text_keys = [keys.text_key(text) for text in texts]
            id_keys = [keys.id_key(item_id) for item_id in ids]
            stored: list[bytes | None] = [None] * (2 * len(chunk))
            if redis is not None:
                stored = [
                    value if codec.valid(value) else None
                    for value in await redis.get_many(text_keys + id_keys)
                ]
            vectors = np.empty((len(chunk), encoder.dim), dtype=np.float32)
            to_compute = [row for row in range(len(chunk)) if stored[row] is None]
            reusable = [row for row in range(len(chunk)) if stored[row] is not None]
            if reusable:
                vectors[reusable] = codec.decode([stored[row] for row in reusable])  # type: ignore[misc]
            if to_compute:
                unique = list(dict.fromkeys(texts[row] for row in to_compute))
                encoded = await asyncio.to_thread(encoder.embed, unique, batch_size)
                # The file gets what the service will serve from the cache (float16 rounding included).
                by_text = dict(zip(unique, codec.round_trip(encoded.vectors), strict=True))
                for row in to_compute:
                    vectors[row] = by_text[texts[row]]
            if redis is not None:
                values = [codec.encode(vector) for vector in vectors]
                writes = [(text_keys[row], values[row]) for row in to_compute]
                writes += [
                    (id_keys[row], values[row])
                    for row in range(len(chunk))
                    if stored[len(chunk) + row] != values[row]
                ]
                await redis.set_many(writes)
            if writer is not None:
                writer.write(ids, vectors)
            computed += len(to_compute)
            reused += len(chunk) - len(to_compute)
            seen += len(chunk)
            progress.update(len(chunk))
            progress.set_postfix(computed=computed, reused=reused)
    return PrecomputeReport(seen, computed, reused, time.perf_counter() - started)
