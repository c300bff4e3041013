"""Fuzzing the API on a real uvicorn server: schemathesis cases generated from the service's own
OpenAPI schema (every route, schema-valid and schema-violating bodies, with and without the API key)
must never get a 5xx and every response must match its documented status, content type and schema.
Plus hand-written hostile inputs, each answered by a 4xx that names the problem."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import Case, GenerationMode

from tests.support.reliability_report import record
from tests.support.servers import LiveServer

API_KEY = "fuzz-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
# Every operation of the schema; test_every_route_is_fuzzed fails when a route is added and not listed.
BODY_OPERATIONS = [("POST", "/v1/embed"), ("POST", "/v1/embeddings"), ("POST", "/v1/items/lookup")]
PLAIN_OPERATIONS = [
    ("GET", "/v1/models"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("POST", "/admin/reload"),
]
EXAMPLES_PER_MODE = 60  # per body operation and generation mode
MAX_ITEMS = 16
MAX_TEXT_CHARS = 2048
MAX_BODY_BYTES = 64 * 1024

cases_by_operation: Counter[str] = Counter()
statuses_seen: Counter[int] = Counter()
hostile_statuses: Counter[str] = Counter()


@pytest.fixture(scope="module")
def live(tiny_artifact: Path) -> Iterator[LiveServer]:
    with LiveServer(
        artifact=tiny_artifact,
        api_key=API_KEY,
        max_items_per_request=MAX_ITEMS,
        max_openai_inputs=MAX_ITEMS,
        max_text_chars=MAX_TEXT_CHARS,
        max_body_bytes=MAX_BODY_BYTES,
    ) as server:
        yield server


@pytest.fixture(scope="module")
def api_schema(live: LiveServer) -> schemathesis.BaseSchema:
    # The schema the running server publishes, not one built in the test.
    return schemathesis.openapi.from_url(f"{live.url}/openapi.json")


@pytest.fixture(scope="module", autouse=True)
def fuzz_figures() -> Iterator[None]:
    yield
    if cases_by_operation:
        record(
            "fuzz",
            cases_total=sum(cases_by_operation.values()),
            cases_by_operation=dict(cases_by_operation),
            statuses_seen={str(status): n for status, n in sorted(statuses_seen.items())},
            server_errors=sum(n for status, n in statuses_seen.items() if status >= 500),
        )


def _runtime_rules(case: Case) -> Case:
    """A schema-valid case made valid for rules the static schema cannot state, so it is not counted
    as wrongly rejected for them: `dimensions` may only be a size the served model lists; token ids must be
    ids of the server's encoding (cl100k_base: all ids below 100,000 are); an id given twice must
    come with the same text."""
    body = case.body
    if not isinstance(body, dict):
        return case
    if body.get("dimensions") is not None:
        body["dimensions"] = None
    inputs = body.get("input")
    if isinstance(inputs, list):
        valid = [
            [int(token) % 100_000 for token in value] if isinstance(value, list) else value
            for value in inputs
        ]
        body["input"] = valid
        if body["input"] and all(isinstance(value, int | float) for value in inputs):
            body["input"] = [int(token) % 100_000 for token in inputs]
    first_text: dict[str, str] = {}
    for item in body.get("items") or []:
        if isinstance(item, dict) and item.get("id") is not None:
            item["text"] = first_text.setdefault(str(item["id"]), item["text"])
    return case


def test_every_route_is_fuzzed(api_schema: schemathesis.BaseSchema, live: LiveServer) -> None:
    published = {
        (method.upper(), path)
        for path, operations in api_schema.raw_schema["paths"].items()
        for method in operations
    }
    assert published == set(BODY_OPERATIONS + PLAIN_OPERATIONS)


# Negative generation needs something to violate: routes without parameters or body get positive cases only.
FUZZ_CASES = [
    (method, path, mode)
    for method, path in BODY_OPERATIONS + PLAIN_OPERATIONS
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode is GenerationMode.POSITIVE or (method, path) not in PLAIN_OPERATIONS[1:]
]


@pytest.mark.parametrize(("method", "path", "mode"), FUZZ_CASES, ids=str)
def test_generated_requests_get_documented_answers(
    api_schema: schemathesis.BaseSchema, live: LiveServer, method: str, path: str, mode: GenerationMode
) -> None:
    strategy = api_schema[path][method].as_strategy(generation_mode=mode)
    if mode is GenerationMode.POSITIVE:
        strategy = strategy.map(_runtime_rules)

    @given(case=strategy)
    @settings(
        max_examples=EXAMPLES_PER_MODE,
        deadline=None,
        database=None,
        derandomize=True,  # the same cases on every run: CI failures reproduce
        suppress_health_check=list(HealthCheck),
    )
    def check(case: Case) -> None:
        cases_by_operation[f"{method} {path}"] += 1
        response = case.call(base_url=live.url, headers=AUTH)
        statuses_seen[response.status_code] += 1
        if response.status_code == 413:
            # Over the body limit: refused before its content matters, valid or not (a byte limit the
            # schema cannot state); it must still be the documented error.
            assert len(response.request.body or b"") > MAX_BODY_BYTES
            assert response.json()["error"]["code"] == "body_too_large"
            return
        # All default checks: not_a_server_error, status code / content type / headers / body schema
        # conformance, positive data accepted, negative data rejected, auth enforced.
        case.validate_response(response)

    check()
    assert cases_by_operation[f"{method} {path}"] >= 1


# --- hand-written hostile inputs ------------------------------------------------------------------

JSON = {"content-type": "application/json"}
EMBED, OPENAI, LOOKUP = "/v1/embed", "/v1/embeddings", "/v1/items/lookup"


def hostile(
    name: str, path: str, body: bytes, headers: dict[str, str], status: int, param: str, words: str
) -> Any:
    """One hostile request: the status it must get, the field its error names, words of the message."""
    return pytest.param(path, body, headers, status, param, words, id=name)


HOSTILE = [
    hostile("malformed JSON", EMBED, b'{"items": [{"text": "a"}', JSON, 422, "body", "malformed JSON"),
    hostile("not UTF-8", EMBED, b'{"items": [{"text": "\xff\xfe"}]}', JSON, 422, "body", "UTF-8"),
    hostile("deeply nested", EMBED, b"[" * 30_000 + b"]" * 30_000, JSON, 422, "body", "nested too deeply"),
    hostile(
        "nested in a field",
        OPENAI,
        b'{"input": ' + b"[" * 3000 + b"]" * 3000 + b"}",
        JSON,
        400,
        "body",
        "nested",
    ),
    hostile(
        "text/plain",
        EMBED,
        b'{"items": [{"text": "a"}]}',
        {"content-type": "text/plain"},
        415,
        "content-type",
        "application/json",
    ),
    hostile(
        "form",
        OPENAI,
        b"input=a",
        {"content-type": "application/x-www-form-urlencoded"},
        415,
        "content-type",
        "application/json",
    ),
    hostile("no content type", LOOKUP, b'{"ids": ["a"]}', {}, 415, "content-type", "none"),
    hostile(
        "huge body",
        EMBED,
        b'{"items": [{"text": "' + b"a" * 200_000 + b'"}]}',
        JSON,
        413,
        "body",
        f"{MAX_BODY_BYTES}-byte",
    ),
    hostile(
        "100k-character text",
        EMBED,
        orjson.dumps({"items": [{"text": "c" * 100_000}]}),
        JSON,
        413,
        "body",
        "limit",
    ),
    hostile(
        "huge item count",
        EMBED,
        orjson.dumps({"items": [{"text": "x"}] * 5000}),
        JSON,
        422,
        "items",
        f"at most {MAX_ITEMS}",
    ),
    hostile(
        "huge input count",
        OPENAI,
        orjson.dumps({"input": ["x"] * 5000}),
        JSON,
        400,
        "input",
        f"at most {MAX_ITEMS}",
    ),
    hostile(
        "huge id count", LOOKUP, orjson.dumps({"ids": ["x"] * 5000}), JSON, 422, "ids", f"at most {MAX_ITEMS}"
    ),
    hostile(
        "long text",
        EMBED,
        orjson.dumps({"items": [{"text": "y" * 10_000}]}),
        JSON,
        422,
        "items.0.text",
        f"at most {MAX_TEXT_CHARS}",
    ),
    hostile("empty text", EMBED, b'{"items": [{"text": ""}]}', JSON, 422, "items.0.text", "empty"),
    hostile(
        "whitespace text",
        EMBED,
        b'{"items": [{"text": " \\t\\n\\u3000"}]}',
        JSON,
        422,
        "items.0.text",
        "whitespace",
    ),
    hostile("empty input", OPENAI, b'{"input": "  "}', JSON, 400, "input.0", "whitespace"),
    hostile("no items", EMBED, b'{"items": []}', JSON, 422, "items", "at least 1"),
    hostile(
        "lone surrogate",
        EMBED,
        b'{"items": [{"text": "ok \\ud800"}]}',
        JSON,
        422,
        "body",  # malformed JSON for the one parser; the message says where
        "surrogate",
    ),
    hostile("lone surrogate input", OPENAI, b'{"input": ["\\udfff"]}', JSON, 400, "body", "surrogate"),
    hostile("lone surrogate id", LOOKUP, b'{"ids": ["\\ud83d"]}', JSON, 422, "body", "surrogate"),
    hostile(
        "NUL in a text",
        EMBED,
        b'{"items": [{"text": "before\\u0000after"}]}',
        JSON,
        422,
        "items.0.text",
        "NUL",
    ),
    hostile("NUL in an input", OPENAI, b'{"input": ["ok", "\\u0000"]}', JSON, 400, "input.1", "NUL"),
    hostile("id float", EMBED, b'{"items": [{"id": 1.5, "text": "a"}]}', JSON, 422, "items.0.id", "string"),
    hostile("id bool", EMBED, b'{"items": [{"id": true, "text": "a"}]}', JSON, 422, "items.0.id", "string"),
    hostile("id list", EMBED, b'{"items": [{"id": ["a"], "text": "a"}]}', JSON, 422, "items.0.id", "string"),
    hostile("id object", LOOKUP, b'{"ids": [{"a": 1}]}', JSON, 422, "ids.0", "string"),
    hostile("id null", LOOKUP, b'{"ids": [null]}', JSON, 422, "ids.0", "string"),
    hostile("id empty", LOOKUP, b'{"ids": [""]}', JSON, 422, "ids.0", "at least 1"),
    hostile("id too long", LOOKUP, orjson.dumps({"ids": ["i" * 600]}), JSON, 422, "ids.0", "at most 512"),
    hostile("text number", EMBED, b'{"items": [{"text": 12}]}', JSON, 422, "items.0.text", "string"),
    hostile(
        "unknown field",
        EMBED,
        b'{"items": [{"text": "a", "vector": [1]}]}',
        JSON,
        422,
        "items.0.vector",
        "not permitted",
    ),
    hostile("body is a list", EMBED, b'[{"text": "a"}]', JSON, 422, "body", "object"),
    hostile("body is null", LOOKUP, b"null", JSON, 422, "body", "object"),
    hostile("unknown token ids", OPENAI, b'{"input": [[1, 2], [100256]]}', JSON, 400, "input.1", "token ids"),
    hostile("negative token id", OPENAI, b'{"input": [-5]}', JSON, 400, "input.0", "token ids"),
    hostile(
        "one id, two texts",
        EMBED,
        b'{"items": [{"id": "a", "text": "x"}, {"id": "b", "text": "y"}, {"id": "a", "text": "z"}]}',
        JSON,
        422,
        "items.2.id",
        "different text",
    ),
]


@pytest.mark.parametrize(("path", "body", "headers", "status", "param", "words"), HOSTILE)
def test_hostile_input_gets_a_4xx_naming_the_problem(
    live: LiveServer, path: str, body: bytes, headers: dict[str, str], status: int, param: str, words: str
) -> None:
    with live.client(headers=AUTH) as client:
        response = client.post(path, content=body, headers=headers)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param, error
    assert error["message"].startswith(param) and words in error["message"], error
    hostile_statuses[str(response.status_code)] += 1
    record("hostile_inputs", cases=sum(hostile_statuses.values()), statuses=dict(hostile_statuses))


def test_a_streamed_body_over_the_limit_is_cut_off_with_413(live: LiveServer) -> None:
    # No Content-Length (chunked): the limit is enforced while the body arrives, not after.
    sent = 0

    def chunks() -> Iterator[bytes]:
        nonlocal sent
        yield b'{"items": [{"text": "'
        for _ in range(1000):  # up to 16 MB offered; the server must stop reading long before
            sent += 16 * 1024
            yield b"z" * (16 * 1024)
        yield b'"}]}'

    with live.client(headers=AUTH) as client:
        try:
            response = client.post(EMBED, content=chunks(), headers=JSON)
        except httpx.TransportError:
            pytest.fail("the server dropped the connection instead of answering 413")
    assert response.status_code == 413
    assert response.json()["error"]["param"] == "body"


def test_data_the_design_accepts_is_embedded_not_a_5xx(live: LiveServer) -> None:
    accepted = [
        ("integer id", {"items": [{"id": 123, "text": "a"}]}),
        ("NUL in an id", {"items": [{"id": "a\x00b", "text": "a"}]}),
        ("text at the limit", {"items": [{"text": "w" * MAX_TEXT_CHARS}]}),
        ("non-BMP text", {"items": [{"text": "🎉 \U0001f600 𝔘𝔫𝔦𝔠𝔬𝔡𝔢"}]}),
        ("control characters", {"items": [{"text": "\x01\x02 bell \x07"}]}),
    ]
    with live.client(headers=AUTH) as client:
        responses = {name: client.post("/v1/embed", json=body) for name, body in accepted}
    assert {name: r.status_code for name, r in responses.items()} == {name: 200 for name, _ in accepted}
    assert responses["integer id"].json()["data"][0]["id"] == "123"
