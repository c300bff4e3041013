"""Texts longer than the model's max_length tokens are never cut silently: each item says how many
tokens were embedded and whether it was truncated (from the cache too), a metric counts them,
`usage` counts what the encoder embedded, and MARC_REJECT_TRUNCATED refuses them naming the item."""

from __future__ import annotations

from pathlib import Path

import openai

from artifact.manifest import read_manifest
from tests.support.servers import LiveServer

SHORT = "red leather running shoes"
PREFIX = "a long description of a wooden garden chair with armrests and a cushion " * 3
LONG_A, LONG_B = PREFIX + "in green", PREFIX + "in blue"  # the same first max_length tokens


def _items(*texts: str) -> dict:
    return {"items": [{"text": text} for text in texts]}


def test_truncation_is_reported_per_item_counted_and_cached(tiny_artifact: Path) -> None:
    max_length = read_manifest(tiny_artifact).max_length
    with LiveServer(artifact=tiny_artifact) as live, live.client() as client:
        first = client.post("/v1/embed", json=_items(SHORT, LONG_A, LONG_B)).json()["data"]
        again = client.post("/v1/embed", json=_items(SHORT, LONG_A, LONG_B)).json()["data"]  # from the cache
        counted = live.metric("marc_items_truncated_total")
    assert [d["cached"] for d in first] == [False] * 3 and [d["cached"] for d in again] == [True] * 3
    for data in (first, again):
        assert [d["truncated"] for d in data] == [False, True, True]
        assert 0 < data[0]["tokens"] < max_length and data[1]["tokens"] == data[2]["tokens"] == max_length
    # Why it matters: two texts that differ only after max_length tokens get the same vector.
    assert first[1]["embedding"] == first[2]["embedding"]
    assert counted == 4  # served truncated items: two per request, cached or not


def test_usage_counts_the_tokens_the_encoder_embedded(tiny_artifact: Path) -> None:
    with LiveServer(artifact=tiny_artifact) as live:
        with live.client() as client:
            tokens = [
                d["tokens"] for d in client.post("/v1/embed", json=_items(SHORT, LONG_A)).json()["data"]
            ]
        sdk = openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0)
        computed = sdk.embeddings.create(model="m", input=[SHORT, LONG_A, "a text only this request has"])
        cached = sdk.embeddings.create(model="m", input=[SHORT, LONG_A])
    assert cached.usage.prompt_tokens == cached.usage.total_tokens == sum(tokens)
    assert computed.usage.prompt_tokens > sum(tokens)


def test_strict_mode_refuses_truncated_texts_naming_the_item(tiny_artifact: Path) -> None:
    with LiveServer(artifact=tiny_artifact, reject_truncated=True) as live, live.client() as client:
        embed = client.post("/v1/embed", json=_items(SHORT, LONG_A))
        openai_route = client.post("/v1/embeddings", json={"input": [SHORT, SHORT + " again", LONG_B]})
        short_only = client.post("/v1/embed", json=_items(SHORT))
        stored = len(live.runtime.cache)  # type: ignore[arg-type]  # the in-process LRU: no Redis URL
    assert embed.status_code == 422 and embed.json()["error"]["param"] == "items.1.text"
    assert embed.json()["error"]["code"] == "context_length_exceeded"
    assert "tokens" in embed.json()["error"]["message"]
    assert openai_route.status_code == 400 and openai_route.json()["error"]["param"] == "input.2"
    # Nothing of a refused request is stored; a request within the limit is served as usual.
    assert short_only.status_code == 200 and short_only.json()["data"][0]["cached"] is False
    assert stored == 1
