"""Answers kept by request body (service/api/memo.py): bounded by bytes past its limit, stale after a
reload, and in the service byte-identical to the answers it stands for, with the key still checked,
the items still counted, and never for misses or truncated texts (answers with ids:
tests/service/cache/test_confirmed_ids.py)."""

from __future__ import annotations

import gc
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter

from service.api.memo import MEMO_MAX_BODY_BYTES, MemoAnswer, ResponseMemo, _entry_bytes
from tests.support.redis_server import SHARED_REDIS_URL, delete_prefix, unique_prefix
from tests.support.reference import served_fingerprint
from tests.support.servers import LiveServer

KEY = "memo-test-key"


def _answer(generation: int = 1, size: int = 100) -> MemoAnswer:
    return MemoAnswer(b"x" * size, ((b"x-cache-hits", b"1"),), generation, 1)


def _memo(max_bytes: int) -> ResponseMemo:
    return ResponseMemo(max_bytes, Counter("memo_hits", "test", registry=CollectorRegistry()))


def _body(i: int) -> bytes:
    return b'{"items":[{"text":"item %04d"}]}' % i


def test_the_memo_keeps_its_byte_bound_past_it_and_drops_the_least_recently_used() -> None:
    per_entry = _entry_bytes(("/v1/embed", _body(0)), _answer())
    memo = _memo(10 * per_entry)
    for i in range(10):
        memo.put("/v1/embed", _body(i), _answer())
    assert len(memo) == 10 and memo.bytes == 10 * per_entry
    assert memo.get("/v1/embed", _body(0), 1) is not None  # now the most recently used
    for i in range(10, 40):  # three times what fits
        memo.put("/v1/embed", _body(i), _answer())
        assert memo.bytes <= memo.max_bytes
    assert len(memo) == 10 and memo.get("/v1/embed", _body(0), 1) is None
    assert [i for i in range(40) if memo.get("/v1/embed", _body(i), 1)] == list(range(30, 40))
    # The route is part of the key; a body over the size bound and an entry over the whole bound
    # are not kept.
    assert memo.get("/v1/embeddings", _body(39), 1) is None
    memo.put("/v1/embed", b" " * (MEMO_MAX_BODY_BYTES + 1), _answer())
    memo.put("/v1/embed", b"big answer", _answer(size=11 * per_entry))
    assert len(memo) == 10 and memo.get("/v1/embed", b"big answer", 1) is None
    with pytest.raises(ValueError, match="max_bytes"):
        _memo(0)


def test_an_answer_of_another_generation_is_stale_and_dropped() -> None:
    memo = _memo(10_000)
    memo.put("/v1/embed", _body(1), _answer(generation=1))
    assert memo.get("/v1/embed", _body(1), 2) is None  # the served models changed
    assert len(memo) == 0 and memo.bytes == 0


@pytest.fixture
def prefix() -> Iterator[str]:
    value = unique_prefix()
    yield value
    delete_prefix(SHARED_REDIS_URL, value)


def _memo_hits(live: LiveServer) -> float:
    return live.metric("marc_cache_requests_total", tier="memo", result="hit")


def test_a_repeated_all_hits_body_gets_the_same_bytes_counted_and_checked(
    tiny_artifact: Path, prefix: str
) -> None:
    body = b'{"items":[{"text":"a kept answer: teak bench"},{"text":"and a second text"}]}'
    openai_body = b'{"input":["a kept answer: teak bench"],"model":"any","encoding_format":"base64"}'
    headers = {"content-type": "application/json", "authorization": f"Bearer {KEY}"}
    with (
        LiveServer(
            artifact=tiny_artifact, redis_url=SHARED_REDIS_URL, cache_prefix=prefix, api_key=KEY
        ) as live,
        live.client(headers=headers) as client,
    ):
        computed = client.post("/v1/embed", content=body)
        first_hit = client.post("/v1/embed", content=body)  # all hits: kept
        near_before, memo_before = live.metric("marc_cache_requests_total", tier="near"), _memo_hits(live)
        repeats = [client.post("/v1/embed", content=body) for _ in range(5)]
        near_after, memo_after = live.metric("marc_cache_requests_total", tier="near"), _memo_hits(live)
        refused = client.post("/v1/embed", content=body, headers={"authorization": "Bearer wrong"})
        openai = [client.post("/v1/embeddings", content=openai_body) for _ in range(3)]
        memo = live.runtime.memo
        assert memo is not None and len(memo) == 2  # one answer per (route, body)
    assert computed.json()["data"][0]["cached"] is False  # computed: not kept
    assert first_hit.headers["x-cache-hits"] == "2"
    for repeat in repeats:
        assert repeat.status_code == 200 and repeat.content == first_hit.content
        assert repeat.headers["x-cache-hits"] == "2" and "x-total-time-ms" in repeat.headers
    assert (near_after - near_before, memo_after - memo_before) == (0, 10)  # 5 repeats x 2 items
    assert refused.status_code == 401  # the key is checked before any kept answer
    assert openai[1].content == openai[2].content and openai[1].json()["usage"]["prompt_tokens"] > 0


def test_answers_with_truncated_texts_are_never_kept(tiny_artifact: Path, prefix: str) -> None:
    items = [{"text": "word " * 200}]  # max_length 32: truncated, counted per request
    with (
        LiveServer(artifact=tiny_artifact, redis_url=SHARED_REDIS_URL, cache_prefix=prefix) as live,
        live.client() as client,
    ):
        answers = [client.post("/v1/embed", json={"items": items}) for _ in range(4)]
        assert live.runtime.memo is not None and len(live.runtime.memo) == 0
        assert _memo_hits(live) == 0
    assert [a.json()["data"][0]["cached"] for a in answers] == [False, True, True, True]
    assert answers[1].content == answers[3].content


def test_past_its_bound_and_switched_off_the_answers_are_the_same(tiny_artifact: Path, prefix: str) -> None:
    bodies = [_body(i) for i in range(60)]
    headers = {"content-type": "application/json"}
    answers: dict[int, list[bytes]] = {}
    for memo_bytes in (0, 3_000, 8 * 1024 * 1024):  # off, room for ~4 of 60 answers, room for all
        with (
            LiveServer(
                artifact=tiny_artifact,
                redis_url=SHARED_REDIS_URL,
                cache_prefix=prefix,
                response_memo_bytes=memo_bytes,
            ) as live,
            live.client(headers=headers) as client,
        ):
            for body in bodies:  # cached by the first server; all hits from then on
                client.post("/v1/embed", content=body)
            answers[memo_bytes] = [client.post("/v1/embed", content=body).content for body in bodies * 2]
            memo = live.runtime.memo
            if memo_bytes == 0:
                assert memo is None
            else:
                assert memo is not None and memo.bytes <= memo_bytes
    assert answers[3_000] == answers[0] == answers[8 * 1024 * 1024]


def test_after_a_reload_a_kept_answer_is_never_repeated(
    tiny_artifact: Path, tiny_artifact_other: Path, tmp_path: Path
) -> None:
    """The same body under the same model name after a swap: the new model's vectors, not the kept bytes."""
    models = tmp_path / "models"
    models.mkdir()
    (models / "shop").symlink_to(tiny_artifact, target_is_directory=True)
    body = b'{"items":[{"text":"kept before a reload: pine shelf"}]}'
    headers = {"content-type": "application/json", "authorization": f"Bearer {KEY}"}
    with LiveServer(artifacts=str(models), api_key=KEY) as live, live.client(headers=headers) as client:
        client.post("/v1/embed", content=body)
        kept = client.post("/v1/embed", content=body)
        assert client.post("/v1/embed", content=body).content == kept.content  # repeated from the memo
        old_flow = weakref.ref(live.runtime.models.default.flow)
        (models / "shop").unlink()
        (models / "shop").symlink_to(tiny_artifact_other, target_is_directory=True)
        assert client.post("/admin/reload").status_code == 200
        memo = live.runtime.memo
        assert memo is not None and len(memo) == 1  # the stale answer is still in the memo ...
        deadline = time.monotonic() + 10
        while old_flow() is not None and time.monotonic() < deadline:
            gc.collect()
            time.sleep(0.05)
        freed = old_flow() is None  # ... but it holds nothing of the retired model
        after = client.post("/v1/embed", content=body).json()
    assert freed
    assert after["fingerprint"] == served_fingerprint(tiny_artifact_other) != kept.json()["fingerprint"]
    assert after["data"][0]["cached"] is False  # computed by the new model
