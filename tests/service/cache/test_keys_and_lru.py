"""Cache key layout and text normalisation, and the in-process LRU (the embedded default)."""

from __future__ import annotations

import asyncio
import re

from service.cache.keys import KeySpace, normalise_text
from service.cache.stores import LruCache


def test_key_layout_and_normalisation() -> None:
    keys = KeySpace("marc", "ab" * 32)
    assert normalise_text("  Cafe\u0301 au lait \n") == "Caf\u00e9 au lait"
    assert re.fullmatch(r"marc:abababababababab:f32t:t:[0-9a-f]{64}", keys.text_key("x"))
    assert keys.text_key(normalise_text(" Cafe\u0301")) == keys.text_key("Caf\u00e9")
    assert keys.id_key("sku-1") == "marc:abababababababab:f32t:i:sku-1"
    assert KeySpace("marc", "ab" * 32, "float16").id_key("sku-1") == "marc:abababababababab:f16t:i:sku-1"


def test_lru_cache_evicts_the_least_recently_used() -> None:
    async def scenario() -> list[bytes | None]:
        cache = LruCache(max_items=2, ttl_seconds=0)
        await cache.set_many([("a", b"1"), ("b", b"2")])
        await cache.get_many(["a"])  # a is now the most recent
        await cache.set_many([("c", b"3")])
        return await cache.get_many(["a", "b", "c"])

    assert asyncio.run(scenario()) == [b"1", None, b"3"]
