"""HTTP API against a real uvicorn server, a real Redis and ONNX Runtime: vectors equal the model's,
caching, OpenAI compatibility, lookup, auth, and every bad input answered with a 4xx naming the field."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import openai
import pytest

from tests.support.redis_server import SHARED_REDIS_URL, delete_prefix, unique_prefix
from tests.support.reference import onnx_reference
from tests.support.servers import LiveServer

TEXTS = ["red leather running shoes", "wireless bluetooth speaker, waterproof", "vintage wooden chair"]


@pytest.fixture(scope="module")
def server(tiny_artifact: Path) -> Iterator[LiveServer]:
    prefix = unique_prefix()
    with LiveServer(
        artifact=tiny_artifact,
        redis_url=SHARED_REDIS_URL,
        cache_prefix=prefix,
        max_items_per_request=8,
        max_text_chars=200,
        max_body_bytes=65536,
    ) as live:
        yield live
    delete_prefix(SHARED_REDIS_URL, prefix)


def _decode(embedding: str, dtype: str = "<f4") -> np.ndarray:
    return np.frombuffer(base64.b64decode(embedding), dtype=dtype)


def test_float_and_base64_equal_the_onnx_model(server: LiveServer, tiny_artifact: Path) -> None:
    expected = onnx_reference(tiny_artifact, TEXTS)
    items = [{"id": f"sku-{i}", "text": text} for i, text in enumerate(TEXTS)]
    with server.client() as client:
        floats = client.post("/v1/embed", json={"items": items})
        b64 = client.post("/v1/embed", json={"items": items, "encoding": "base64"})
        half = client.post("/v1/embed", json={"items": items, "encoding": "base64_fp16"})
    assert floats.status_code == b64.status_code == half.status_code == 200, floats.text
    body = floats.json()
    assert body["dim"] == expected.shape[1] and body["model"] == "tiny-artifact"
    assert len(body["fingerprint"]) == 64
    assert [d["id"] for d in body["data"]] == ["sku-0", "sku-1", "sku-2"]
    np.testing.assert_allclose([d["embedding"] for d in body["data"]], expected, atol=1e-5)
    np.testing.assert_allclose([_decode(d["embedding"]) for d in b64.json()["data"]], expected, atol=1e-5)
    half_vectors = [_decode(d["embedding"], "<f2") for d in half.json()["data"]]
    np.testing.assert_allclose(half_vectors, expected, atol=1e-2, rtol=1e-2)
    for response in (floats, b64, half):
        for header in ("x-queue-time-ms", "x-inference-time-ms", "x-total-time-ms", "x-cache-hits"):
            assert float(response.headers[header]) >= 0


def test_second_request_is_a_cache_hit(server: LiveServer) -> None:
    text = "a brand new compact electric coffee maker"
    hits_before = server.metric("marc_cache_requests_total", result="hit")
    misses_before = server.metric("marc_cache_requests_total", result="miss")
    with server.client() as client:
        first = client.post("/v1/embed", json={"items": [{"text": text}]})
        second = client.post("/v1/embed", json={"items": [{"text": "  " + text + "\n"}]})  # same normalised
    assert first.json()["data"][0]["cached"] is False
    assert second.json()["data"][0]["cached"] is True
    assert first.headers["x-cache-hits"] == "0" and second.headers["x-cache-hits"] == "1"
    assert second.json()["data"][0]["embedding"] == first.json()["data"][0]["embedding"]
    assert server.metric("marc_cache_requests_total", result="hit") == hits_before + 1
    assert server.metric("marc_cache_requests_total", result="miss") == misses_before + 1


def test_all_hit_requests_are_answered_like_the_route_and_counted_once(server: LiveServer) -> None:
    warm, fresh = "a hot catalogue item: oak desk, 120 cm", "a cold catalogue item: walnut shelf"
    with server.client() as client:
        client.post("/v1/embed", json={"items": [{"text": warm}]})
        hits, misses = (server.metric("marc_cache_requests_total", result=r) for r in ("hit", "miss"))
        mixed = client.post("/v1/embed", json={"items": [{"text": warm, "id": "d-1"}, {"text": fresh}]})
        counted = [server.metric("marc_cache_requests_total", result=r) for r in ("hit", "miss")]
        all_hits = client.post("/v1/embed", json={"items": [{"text": warm, "id": "d-1"}, {"text": fresh}]})
        # Cached texts never excuse invalid input: the 4xx still names the field.
        extra_field = client.post("/v1/embed", json={"items": [{"text": warm, "colour": "red"}]})
        too_many = client.post("/v1/embed", json={"items": [{"text": warm}] * 9})
    assert counted == [hits + 1, misses + 1]  # one cache read for the mixed request, not two
    assert [d["cached"] for d in mixed.json()["data"]] == [True, False]
    assert [d["cached"] for d in all_hits.json()["data"]] == [True, True]
    assert all_hits.headers["x-cache-hits"] == "2" and float(all_hits.headers["x-inference-time-ms"]) == 0
    assert all_hits.headers["content-type"] == "application/json"
    without_flags = [{k: v for k, v in d.items() if k != "cached"} for d in all_hits.json()["data"]]
    assert without_flags == [{k: v for k, v in d.items() if k != "cached"} for d in mixed.json()["data"]]
    assert {k: v for k, v in all_hits.json().items() if k != "data"} == {
        k: v for k, v in mixed.json().items() if k != "data"
    }
    assert extra_field.status_code == 422 and extra_field.json()["error"]["param"] == "items.0.colour"
    assert too_many.status_code == 422 and too_many.json()["error"]["param"] == "items"


def test_openai_sdk_gets_the_same_vectors(server: LiveServer) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    default = client.embeddings.create(model="tiny-artifact", input=TEXTS)  # SDK asks for base64
    as_float = client.embeddings.create(model="whatever", input=TEXTS[0], encoding_format="float")
    with server.client() as http:
        ours = http.post("/v1/embed", json={"items": [{"text": t} for t in TEXTS]}).json()["data"]
    assert [d.index for d in default.data] == [0, 1, 2]
    assert default.model == "tiny-artifact"
    assert default.usage.prompt_tokens > 0 and default.usage.total_tokens == default.usage.prompt_tokens
    np.testing.assert_allclose([d.embedding for d in default.data], [d["embedding"] for d in ours], atol=1e-6)
    np.testing.assert_allclose(as_float.data[0].embedding, ours[0]["embedding"], atol=1e-6)
    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny-artifact"]


def test_lookup_returns_vectors_written_under_ids(server: LiveServer) -> None:
    with server.client() as client:
        embedded = client.post(
            "/v1/embed", json={"items": [{"id": 42, "text": "steel kitchen knife"}]}
        ).json()
        found = client.post("/v1/items/lookup", json={"ids": ["42", "no-such-item"]}).json()
        changed = client.post("/v1/embed", json={"items": [{"id": "42", "text": "cotton pillow"}]}).json()
        again = client.post("/v1/items/lookup", json={"ids": [42], "encoding": "base64"}).json()
    assert embedded["data"][0]["id"] == "42"
    assert [d["id"] for d in found["data"]] == ["42"] and found["unknown"] == ["no-such-item"]
    np.testing.assert_array_equal(found["data"][0]["embedding"], embedded["data"][0]["embedding"])
    # The id now maps to the new text's vector.
    np.testing.assert_allclose(_decode(again["data"][0]["embedding"]), changed["data"][0]["embedding"])


def test_models_and_health(server: LiveServer, tiny_artifact: Path) -> None:
    with server.client() as client:
        models = client.get("/v1/models").json()
        ready = client.get("/readyz")
        health = client.get("/healthz")
    card = models["data"][0]
    assert card["manifest"]["dim"] == card["dim"] == 16
    # MARC_VARIANT=auto on CPU: the artifact's int8 (per-row activation scales).
    assert card["provider"] == "CPUExecutionProvider" and card["variant"] == "int8"
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    assert ready.status_code == 200
    assert ready.json()["cache"] == {"backend": "redis", "status": "ok"}
    assert ready.json()["provider"] == "CPUExecutionProvider"


def test_metrics_have_the_design_names(server: LiveServer) -> None:
    with server.client() as client:
        client.post("/v1/embed", json={"items": [{"text": "metrics probe item"}]})
    samples = server.metrics()
    for name in (
        "marc_request_duration_seconds_count",
        "marc_inference_duration_seconds_count",
        "marc_batch_size_count",
        "marc_queue_depth",
        "marc_cache_requests_total",
        "marc_items_embedded_total",
        "marc_model_info",
        "marc_overload_rejections_total",
    ):
        assert name in samples, name
    (labels, value), *_ = samples["marc_model_info"]
    assert value == 1 and labels["layer"] == "2" and labels["dim"] == "16"
    assert labels["provider"] == "CPUExecutionProvider"
    assert server.metric("marc_request_duration_seconds_count", route="/v1/embed", status="200") > 0


def test_every_route_is_counted_under_its_own_label(server: LiveServer) -> None:
    """FastAPI's routes too (not only the embed routes): only unknown paths share "unmatched"."""
    with server.client() as client:
        for path in ("/v1/models", "/healthz", "/readyz", "/no/such/path"):
            client.get(path)
    for route, status in (
        ("/v1/models", "200"),
        ("/healthz", "200"),
        ("/readyz", "200"),
        ("unmatched", "404"),
    ):
        assert server.metric("marc_request_duration_seconds_count", route=route, status=status) >= 1, route


LONG = "x" * 201
BAD_REQUESTS = [
    # (path, body or raw bytes, content type, expected status, the field the error must name)
    ("/v1/embed", b'{"items": [{"text": "a"}', "application/json", 422, "body"),
    ("/v1/embed", b"items=1", "application/x-www-form-urlencoded", 415, "content-type"),
    ("/v1/embed", {"items": [{"text": "a"}]}, "text/plain", 415, "content-type"),
    ("/v1/embed", {"items": []}, "application/json", 422, "items"),
    ("/v1/embed", {}, "application/json", 422, "items"),
    ("/v1/embed", {"items": [{"text": ""}]}, "application/json", 422, "items.0.text"),
    ("/v1/embed", {"items": [{"text": " \t\n"}]}, "application/json", 422, "items.0.text"),
    ("/v1/embed", {"items": [{"text": "ok"}, {"text": LONG}]}, "application/json", 422, "items.1.text"),
    ("/v1/embed", {"items": [{"text": "a"}] * 9}, "application/json", 422, "items"),
    ("/v1/embed", {"items": [{"text": 5}]}, "application/json", 422, "items.0.text"),
    ("/v1/embed", {"items": [{"text": None}]}, "application/json", 422, "items.0.text"),
    ("/v1/embed", {"items": [{"txt": "a"}]}, "application/json", 422, "items.0.text"),
    ("/v1/embed", {"items": "abc"}, "application/json", 422, "items"),
    ("/v1/embed", {"items": [{"text": "a", "id": ""}]}, "application/json", 422, "items.0.id"),
    ("/v1/embed", {"items": [{"text": "a", "id": [1]}]}, "application/json", 422, "items.0.id"),
    ("/v1/embed", {"items": [{"text": "a"}], "encoding": "hex"}, "application/json", 422, "encoding"),
    # JSON with a lone surrogate escape is malformed for the one parser (it names line and column).
    ("/v1/embed", b'{"items": [{"text": "\\ud800"}]}', "application/json", 422, "body"),
    (
        "/v1/embed",
        {"items": [{"text": "a"}, {"text": "nul \x00 byte"}]},
        "application/json",
        422,
        "items.1.text",
    ),
    # /v1/embeddings answers invalid input with OpenAI's 400.
    ("/v1/embeddings", {"input": "nul \x00"}, "application/json", 400, "input.0"),
    ("/v1/embed", b"[" * 5000 + b"]" * 5000, "application/json", 422, "body"),
    ("/v1/embed", b'{"items": [{"text": "' + b"a" * 70_000 + b'"}]}', "application/json", 413, "body"),
    ("/v1/embeddings", {"input": [[1, 2], [-1]], "model": "m"}, "application/json", 400, "input.1"),
    ("/v1/embeddings", {"input": [[1, "a"]], "model": "m"}, "application/json", 400, "input.0"),
    ("/v1/embeddings", {"input": [[10**9]], "model": "m"}, "application/json", 400, "input.0"),
    ("/v1/embeddings", {"input": [[]], "model": "m"}, "application/json", 400, "input.0"),
    ("/v1/embeddings", {"input": [True], "model": "m"}, "application/json", 400, "input.0"),
    ("/v1/embeddings", {"input": [], "model": "m"}, "application/json", 400, "input"),
    ("/v1/embeddings", {"input": ["a", ""], "model": "m"}, "application/json", 400, "input.1"),
    ("/v1/embeddings", {"input": LONG, "model": "m"}, "application/json", 400, "input.0"),
    ("/v1/embeddings", {"input": " ", "model": "m"}, "application/json", 400, "input.0"),
    ("/v1/embeddings", {"input": 7, "model": "m"}, "application/json", 400, "input"),
    ("/v1/embeddings", {"input": ["a"] * 2049, "model": "m"}, "application/json", 400, "input"),
    ("/v1/embeddings", {"input": "a", "encoding_format": "x"}, "application/json", 400, "encoding_format"),
    ("/v1/embeddings", {"input": "a", "dimensions": 3}, "application/json", 400, "dimensions"),
    (
        "/v1/embed",
        {"items": [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}]},
        "application/json",
        422,
        "items.1.id",
    ),
    ("/v1/items/lookup", {"ids": []}, "application/json", 422, "ids"),
    ("/v1/items/lookup", {"ids": [None]}, "application/json", 422, "ids.0"),
    ("/v1/items/lookup", {"ids": ["a"] * 9}, "application/json", 422, "ids"),
]


@pytest.mark.parametrize(("path", "body", "content_type", "status", "field"), BAD_REQUESTS)
def test_bad_input_gets_a_4xx_naming_the_field(
    server: LiveServer, path: str, body: object, content_type: str, status: int, field: str
) -> None:
    import orjson

    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    with server.client() as client:
        response = client.post(path, content=raw, headers={"content-type": content_type})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == field, error
    assert error["message"].startswith(field), error


def test_nothing_bad_reaches_a_500(server: LiveServer) -> None:
    with server.client() as client:
        odd = [
            client.post("/v1/embed", json={"items": [{"text": "bell \x07 and tab \t"}]}),
            client.post("/v1/embed", json={"items": [{"text": "\u200b\u00a0emoji 🎉 ünïcödé"}]}),
            client.post("/v1/embed", json={"items": [{"text": "same"}, {"text": "same"}]}),
            client.post("/v1/embed", json={"items": [{"text": "a", "id": True}]}),
            client.get("/v1/embed"),
            client.get("/no/such/route"),
            client.post("/v1/embed", content=b"", headers={"content-type": "application/json"}),
        ]
    assert [r.status_code for r in odd] == [200, 200, 200, 422, 405, 404, 422], [r.text for r in odd]
    assert odd[2].json()["data"][0]["embedding"] == odd[2].json()["data"][1]["embedding"]


def test_api_key(tiny_artifact: Path) -> None:
    with LiveServer(artifact=tiny_artifact, api_key="s3cret") as live, live.client() as client:
        body = {"items": [{"text": "auth probe"}]}
        missing = client.post("/v1/embed", json=body)
        wrong = client.post("/v1/embed", json=body, headers={"authorization": "Bearer nope"})
        right = client.post("/v1/embed", json=body, headers={"authorization": "Bearer s3cret"})
        wrong_on_a_hit = client.post("/v1/embed", json=body, headers={"authorization": "Bearer nope"})
        models = client.get("/v1/models")
        open_routes = [client.get(path).status_code for path in ("/healthz", "/readyz", "/metrics")]
        sdk = openai.OpenAI(base_url=f"{live.url}/v1", api_key="s3cret", max_retries=0)
        sdk_vector = sdk.embeddings.create(model="m", input="auth probe").data[0].embedding
    assert missing.status_code == wrong.status_code == models.status_code == 401
    assert wrong_on_a_hit.status_code == 401  # a cached answer is no reason to skip the key
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert missing.json()["error"]["param"] == "authorization"
    assert right.status_code == 200
    assert open_routes == [200, 200, 200]
    np.testing.assert_allclose(sdk_vector, right.json()["data"][0]["embedding"], atol=1e-6)
