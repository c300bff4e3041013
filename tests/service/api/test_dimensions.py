"""`dimensions`: a nested artifact serves each recorded prefix z[:d] of the one cached full-k vector
(asking for a smaller prefix after the full vector is a cache hit, on a real Redis), encodings apply
after slicing, `/v1/models` lists the sizes, and any other size is refused naming the allowed ones."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import openai
import pytest

from service.api.encodings import int8_quantised
from tests.service.api.test_encodings import decoded
from tests.support.redis_server import SHARED_REDIS_URL, delete_prefix, unique_prefix
from tests.support.servers import LiveServer

NESTED = [4, 8, 16]
TEXTS = ["oak desk with two drawers", "linen summer dress, blue", "cast iron skillet 28 cm"]


@pytest.fixture(scope="module")
def nested_artifact(export_tiny: Callable[..., Path]) -> Path:
    return export_tiny(nested_dims=NESTED)


@pytest.fixture(scope="module")
def server(nested_artifact: Path) -> Iterator[LiveServer]:
    prefix = unique_prefix()
    with LiveServer(artifact=nested_artifact, redis_url=SHARED_REDIS_URL, cache_prefix=prefix) as live:
        yield live
    delete_prefix(SHARED_REDIS_URL, prefix)


def test_models_lists_the_nested_dimensions(server: LiveServer) -> None:
    with server.client() as client:
        card = client.get("/v1/models").json()["data"][0]
    assert card["dim"] == 16 and card["dimensions"] == NESTED
    assert card["manifest"]["nested_dims"] == NESTED


def test_a_prefix_after_the_full_vector_is_a_cache_hit_and_equals_its_slice(server: LiveServer) -> None:
    items = [{"text": text} for text in TEXTS]
    hits = server.metric("marc_cache_requests_total", result="hit")
    misses = server.metric("marc_cache_requests_total", result="miss")
    with server.client() as client:
        full = client.post("/v1/embed", json={"items": items})
        prefixes = {d: client.post("/v1/embed", json={"items": items, "dimensions": d}) for d in NESTED}
    assert full.headers["x-cache-hits"] == "0" and full.json()["dim"] == 16
    vectors = np.asarray([d["embedding"] for d in full.json()["data"]], np.float32)
    for d, answer in prefixes.items():
        body = answer.json()
        assert answer.status_code == 200 and body["dim"] == d
        assert answer.headers["x-cache-hits"] == str(len(TEXTS)), d
        assert all(item["cached"] for item in body["data"])
        # Served as sliced: z[:d], not re-normalised.
        np.testing.assert_array_equal(
            np.asarray([i["embedding"] for i in body["data"]], np.float32), vectors[:, :d]
        )
    # One full-k value per text: the first request missed, every prefix after it hit.
    assert server.metric("marc_cache_requests_total", result="miss") == misses + len(TEXTS)
    assert server.metric("marc_cache_requests_total", result="hit") == hits + len(NESTED) * len(TEXTS)


def test_a_prefix_first_then_the_full_vector_is_a_hit_too(server: LiveServer) -> None:
    item = {"text": "felt hat, grey, size M"}
    with server.client() as client:
        small = client.post("/v1/embed", json={"items": [item], "dimensions": 4}).json()["data"][0]
        full = client.post("/v1/embed", json={"items": [item]})
    assert small["cached"] is False and full.headers["x-cache-hits"] == "1"
    assert full.json()["data"][0]["embedding"][:4] == small["embedding"]


@pytest.mark.parametrize("encoding", ["base64", "float16", "int8", "binary"])
def test_encodings_apply_to_the_sliced_prefix(server: LiveServer, encoding: str) -> None:
    items = [{"id": f"dim-{i}", "text": text} for i, text in enumerate(TEXTS)]
    with server.client() as client:
        full = client.post("/v1/embed", json={"items": items}).json()
        sliced = client.post("/v1/embed", json={"items": items, "dimensions": 8, "encoding": encoding}).json()
        looked_up = client.post(
            "/v1/items/lookup", json={"ids": [i["id"] for i in items], "dimensions": 8, "encoding": encoding}
        ).json()
    for body in (sliced, looked_up):
        assert body["dim"] == 8
        for item, whole in zip(body["data"], full["data"], strict=True):
            prefix = np.asarray(whole["embedding"], np.float32)[:8]
            got = decoded(encoding, item, 8)
            if encoding == "int8":  # the prefix's own scale, not the full vector's
                q, scale = int8_quantised(prefix)
                assert item["scale"] == pytest.approx(float(scale), rel=1e-7)
                np.testing.assert_array_equal(got, q.astype(np.float32) * scale)
            elif encoding == "binary":
                np.testing.assert_array_equal(got, np.where(prefix > 0, 1, -1))
            elif encoding == "float16":
                np.testing.assert_array_equal(got, prefix.astype(np.float16).astype(np.float32))
            else:
                np.testing.assert_array_equal(got, prefix)


def test_openai_sdk_dimensions(server: LiveServer) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    answer = client.embeddings.create(model="m", input=TEXTS, dimensions=8)
    full = client.embeddings.create(model="m", input=TEXTS)
    assert [len(d.embedding) for d in answer.data] == [8, 8, 8]
    np.testing.assert_array_equal([d.embedding for d in answer.data], [d.embedding[:8] for d in full.data])
    with pytest.raises(openai.BadRequestError) as refused:
        client.embeddings.create(model="m", input=TEXTS, dimensions=12)
    assert refused.value.param == "dimensions"  # type: ignore[attr-defined]
    assert "4, 8, 16" in str(refused.value)


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/v1/embed", {"items": [{"text": "a"}], "dimensions": 12}, 422),
        ("/v1/embed", {"items": [{"text": "a"}], "dimensions": 0}, 422),
        ("/v1/embed", {"items": [{"text": "a"}], "dimensions": 32}, 422),
        ("/v1/embed", {"items": [{"text": "a"}], "dimensions": -4}, 422),
        ("/v1/items/lookup", {"ids": ["a"], "dimensions": 3}, 422),
        ("/v1/embeddings", {"input": "a", "dimensions": 5}, 400),
    ],
)
def test_a_size_the_model_does_not_serve_is_refused_naming_the_allowed_ones(
    server: LiveServer, path: str, body: object, status: int
) -> None:
    with server.client() as client:
        response = client.post(path, json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == "dimensions" and error["message"].startswith("dimensions")
    assert "4, 8, 16" in error["message"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/embed", {"items": [{"text": "a"}], "dimensions": "eight"}),
        ("/v1/embed", {"items": [{"text": "a"}], "dimensions": 8.5}),
        ("/v1/embed", {"items": [{"text": "a"}], "dimensions": [8]}),
    ],
)
def test_a_dimensions_that_is_no_integer_is_refused(server: LiveServer, path: str, body: object) -> None:
    with server.client() as client:
        response = client.post(path, json=body)
    assert response.status_code == 422 and response.json()["error"]["param"] == "dimensions"


def test_an_artifact_without_prefixes_serves_only_its_k(tiny_artifact: Path) -> None:
    with LiveServer(artifact=tiny_artifact) as live, live.client() as client:
        card = client.get("/v1/models").json()["data"][0]
        same = client.post("/v1/embed", json={"items": [{"text": "a"}], "dimensions": 16})
        smaller = client.post("/v1/embed", json={"items": [{"text": "a"}], "dimensions": 8})
    assert card["dimensions"] == [16] and card["manifest"]["nested_dims"] == []
    assert same.status_code == 200 and same.json()["dim"] == 16
    assert smaller.status_code == 422
    assert (
        smaller.json()["error"]["message"] == "dimensions: this model serves vectors of 16 dimensions (got 8)"
    )
