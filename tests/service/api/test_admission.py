"""Admission on its own, fed through the ASGI receive channel as a server would: the order of the
checks (cheapest first), the body limit and read timeout, refusing too many items before any item is
built, one text per id, token arrays decoded with the real tiktoken encoding; and the shape scan."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from service.api import json_shape
from service.api.admission import Admission
from service.api.disconnect import ClientDisconnected
from service.api.errors import ApiError
from service.api.schemas import EmbedRequest
from service.api.token_ids import load_token_decoder
from service.settings import Settings

KEY = "unit-key"
GOOD = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}


def _admission(**settings: Any) -> Admission:
    values = {"artifact": Path("unused"), "api_key": KEY, "max_items_per_request": 8, **settings}
    return Admission(Settings(**values), load_token_decoder("cl100k_base"))


def _scope(headers: dict[str, str]) -> dict[str, Any]:
    return {"type": "http", "headers": [(k.encode(), v.encode()) for k, v in headers.items()]}


def _receive(*chunks: bytes, then: str = "end") -> tuple[Callable[[], Awaitable[dict[str, Any]]], list[int]]:
    """Delivers ``chunks``, then nothing more ("end"), a hang-up ("disconnect") or silence ("wait")."""
    delivered = [0]

    async def receive() -> dict[str, Any]:
        if delivered[0] < len(chunks):
            delivered[0] += 1
            more = delivered[0] < len(chunks) or then != "end"
            return {"type": "http.request", "body": chunks[delivered[0] - 1], "more_body": more}
        if then == "disconnect":
            return {"type": "http.disconnect"}
        await asyncio.Event().wait()  # a client that stopped sending
        raise AssertionError("unreachable")

    return receive, delivered


def _admit(admission: Admission, route: str, headers: dict[str, str], receive: Callable) -> Any:
    return asyncio.run(getattr(admission, route)(_scope(headers), receive))


def _refusal(admission: Admission, route: str, headers: dict[str, str], *chunks: bytes) -> ApiError:
    receive, _ = _receive(*chunks)
    with pytest.raises(ApiError) as refused:
        _admit(admission, route, headers, receive)
    return refused.value


def test_the_cheapest_check_answers_first() -> None:
    admission = _admission()
    # No key and no JSON: the key is checked first; with the key, the content type.
    assert _refusal(admission, "embed", {"content-type": "text/plain"}, b"x").status == 401
    assert _refusal(admission, "embed", {**GOOD, "content-type": "text/plain"}, b"x").status == 415
    # A declared size over the limit is refused before a byte of the body is read.
    receive, delivered = _receive(b"{}")
    with pytest.raises(ApiError) as refused:
        _admit(admission, "embed", {**GOOD, "content-length": str(10**9)}, receive)
    assert refused.value.status == 413 and delivered == [0]


def test_a_body_growing_past_the_limit_is_cut_off_while_it_arrives() -> None:
    admission = _admission(max_body_bytes=2048)
    receive, delivered = _receive(*[b"x" * 1000] * 50)
    with pytest.raises(ApiError) as refused:
        _admit(admission, "embed", GOOD, receive)
    assert refused.value.status == 413 and refused.value.headers == {"Connection": "close"}
    assert delivered == [3]  # stopped at the first chunk past 2,048 bytes


def test_a_body_that_stops_arriving_times_out_and_a_hang_up_is_no_error() -> None:
    admission = _admission(body_read_timeout_seconds=0.05)
    receive, _ = _receive(b'{"items": [', then="wait")
    with pytest.raises(ApiError) as refused:
        _admit(admission, "embed", GOOD, receive)
    assert refused.value.status == 408 and refused.value.code == "body_timeout"
    receive, _ = _receive(b'{"items": [', then="disconnect")
    with pytest.raises(ClientDisconnected):
        _admit(admission, "embed", GOOD, receive)


def test_too_many_items_are_refused_before_any_item_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_parsing(*args: object, **kwargs: object) -> None:
        raise AssertionError("the body was parsed")

    monkeypatch.setattr(EmbedRequest, "model_validate_json", no_parsing)
    body = orjson.dumps({"items": [{"text": "a"}] * 100_000})  # 1.3 MB, within the limit set here
    error = _refusal(_admission(max_body_bytes=4 * 2**20), "embed", GOOD, body)
    assert (error.status, error.code, error.param) == (422, "too_many_items", "items")
    assert error.message == "items: at most 8 items per request"


def test_limits_after_the_one_parse() -> None:
    admission = _admission(max_text_chars=20)
    long_text = _refusal(
        admission, "embed", GOOD, orjson.dumps({"items": [{"text": "ok"}, {"text": "x" * 21}]})
    )
    assert (long_text.param, long_text.code) == ("items.1.text", "text_too_long")
    same_id = orjson.dumps(
        {"items": [{"id": "a", "text": "x"}, {"id": "b", "text": "y"}, {"id": "a", "text": "z"}]}
    )
    assert _refusal(admission, "embed", GOOD, same_id).param == "items.2.id"
    # The same id with the same text (after normalisation) is fine.
    receive, _ = _receive(orjson.dumps({"items": [{"id": "a", "text": "x"}, {"id": "a", "text": " x "}]}))
    assert len(_admit(admission, "embed", GOOD, receive).items) == 2


def test_openai_inputs_token_arrays_are_decoded_and_errors_are_400() -> None:
    admission = _admission()
    encoding = load_token_decoder("cl100k_base")
    assert encoding is not None
    body = orjson.dumps({"input": [[39, 9523, 2489], "plain text"], "model": "m"})
    receive, _ = _receive(body)
    _, texts = _admit(admission, "openai", GOOD, receive)
    assert texts == [*encoding.decode([[39, 9523, 2489]]), "plain text"] and texts[0].strip()
    unknown = _refusal(admission, "openai", GOOD, orjson.dumps({"input": [[100256]]}))
    assert (unknown.status, unknown.param) == (400, "input.0") and "cl100k_base" in unknown.message
    off = Admission(Settings(artifact=Path("unused"), api_key=KEY), None)
    refused = _refusal(off, "openai", GOOD, orjson.dumps({"input": [[1, 2]]}))
    assert (
        refused.code == "token_arrays_unsupported" and "check_embedding_ctx_length=False" in refused.message
    )


@pytest.mark.parametrize(
    ("body", "field", "max_items", "one", "expected"),
    [
        ({"items": [{"text": "a"}] * 8}, "items", 8, False, None),
        ({"items": [{"text": "a"}] * 9}, "items", 8, False, "too_many_items"),
        ({"items": [{"id": "x", "text": 'quotes " and \\ and , [ {'}] * 8}, "items", 8, False, None),
        (
            {"items": [{"id": "x", "text": 'quotes " and \\ and , [ {'}] * 9},
            "items",
            8,
            False,
            "too_many_items",
        ),
        (
            {"items": [{"text": "a, b, c, d, e, f, g, h, i, j"}] * 3},
            "items",
            8,
            False,
            None,
        ),  # commas in text
        ({"ids": list(range(8))}, "ids", 8, False, None),
        ({"ids": list(range(9))}, "ids", 8, False, "too_many_items"),
        ({"input": list(range(5000))}, "input", 8, True, None),  # one token array, however long
        ({"input": [[1, 2, 3]] * 9}, "input", 8, True, "too_many_items"),
        ({"input": ["a"] * 9}, "input", 8, True, "too_many_items"),
        ({"items": [{"text": "a", "extra": [[1]] * 500}]}, "items", 8, False, "too_many_values"),
    ],
)
def test_the_shape_scan(body: object, field: str, max_items: int, one: bool, expected: str | None) -> None:
    raw = orjson.dumps(body)
    budget = max_items * 8 + 64 + (10_000 if one else 0)
    got = json_shape.refusal(
        raw, list_field=field, max_items=max_items, max_values=budget, numbers_are_one_item=one
    )
    assert got == expected


def test_the_shape_scan_on_malformed_and_deep_bodies() -> None:
    deep = b'{"items": [' + b"[" * 40 + b"1," * 20
    unterminated = b'{"items": [{"text": "' + b'\\",' * 50
    assert json_shape.refusal(deep, list_field="items", max_items=8, max_values=200) == "too_deep"
    assert json_shape.refusal(unterminated, list_field="items", max_items=8, max_values=200) is None
