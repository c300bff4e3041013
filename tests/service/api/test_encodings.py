"""Wire encodings (`service.api.encodings`): each one round-trips exactly as documented - through the
decoders of docs/api.md, executed here - on the encoder and on a real server's answers; the openai
SDK still gets float32 base64; bad encodings are refused naming the field."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest

from service.api.encodings import WIRE_ENCODINGS, encode_vector, int8_quantised, sign_bits, wire_bytes
from tests.support.redis_server import SHARED_REDIS_URL, delete_prefix, unique_prefix
from tests.support.servers import LiveServer

REPO = Path(__file__).resolve().parents[3]
TEXTS = ["red leather running shoes", "wireless bluetooth speaker, waterproof", "vintage wooden chair"]


def documented_decoders() -> dict[str, Callable[..., np.ndarray]]:
    """The decoder block of docs/api.md, executed as written."""
    doc = (REPO / "docs" / "api.md").read_text()
    block = re.search(r"<!-- decoders:start -->\n```python\n(.*?)```\n<!-- decoders:end -->", doc, re.S)
    assert block, "docs/api.md lost its decoders block"
    namespace: dict[str, Any] = {}
    exec(compile(block.group(1), "docs/api.md decoders", "exec"), namespace)
    return {name: namespace[f"decode_{name}"] for name in ("base64", "float16", "int8", "binary")}


DECODE = documented_decoders()


def decoded(encoding: str, item: dict[str, Any], dim: int) -> np.ndarray:
    """A body item's vector through the documented decoder of ``encoding``."""
    embedding = item["embedding"]
    if encoding == "float":
        return np.asarray(embedding, np.float32)
    if encoding == "int8":
        return DECODE["int8"](embedding, item["scale"])
    if encoding == "binary":
        return DECODE["binary"](embedding, dim)
    return DECODE["float16" if encoding == "base64_fp16" else encoding](embedding)


def expected(encoding: str, vector: np.ndarray) -> np.ndarray:
    """What each encoding promises to give back for a float32 ``vector``."""
    if encoding in ("float", "base64"):
        return vector
    if encoding in ("float16", "base64_fp16"):
        return vector.astype(np.float16).astype(np.float32)
    if encoding == "int8":
        q, scale = int8_quantised(vector)
        return q.astype(np.float32) * scale
    return np.where(vector > 0, 1.0, -1.0).astype(np.float32)


VECTORS = {
    "random": np.random.default_rng(0).normal(size=64).astype(np.float32),
    "odd dim": np.random.default_rng(1).normal(scale=30, size=13).astype(np.float32),
    "zeros": np.zeros(8, np.float32),
    "one hot negative": np.array([0, 0, -2.5, 0, 0], np.float32),
    "tiny values": np.full(16, 1e-30, np.float32),
}


@pytest.mark.parametrize("encoding", WIRE_ENCODINGS)
@pytest.mark.parametrize("name", VECTORS)
def test_each_encoding_round_trips_exactly_through_the_documented_decoder(encoding: str, name: str) -> None:
    import orjson

    vector = VECTORS[name]
    embedding, scale = encode_vector(vector, encoding)  # type: ignore[arg-type]
    # Through JSON, as a client sees it (orjson writes float32 numbers and the scale).
    item = orjson.loads(
        orjson.dumps({"embedding": embedding, "scale": scale}, option=orjson.OPT_SERIALIZE_NUMPY)
    )
    got = decoded(encoding, item, len(vector))
    assert got.dtype == np.float32 and got.shape == vector.shape
    np.testing.assert_array_equal(got, expected(encoding, vector))
    if encoding != "float":  # the payload is as large as documented (int8: plus its float32 scale)
        payload = base64.b64decode(embedding)  # type: ignore[arg-type]
        assert len(payload) + 4 * (encoding == "int8") == wire_bytes(len(vector), encoding)  # type: ignore[arg-type]


def test_int8_error_is_within_half_a_step_and_the_peak_is_exact() -> None:
    vector = VECTORS["random"]
    q, scale = int8_quantised(vector)
    assert scale.dtype == np.float32 and np.abs(q).max() == 127
    error = np.abs(q.astype(np.float32) * scale - vector)
    assert error.max() <= scale / 2 * (1 + 1e-6)
    peak = np.argmax(np.abs(vector))
    assert q[peak] * scale == pytest.approx(vector[peak], rel=1e-6)
    assert int8_quantised(-vector)[0].tolist() == (-q).tolist()  # symmetric


def test_binary_bits_are_packed_most_significant_first() -> None:
    vector = np.array([1, -1, -1, -1, -1, -1, -1, 0.5, -3, 2], np.float32)  # 10 dims -> 2 bytes
    assert sign_bits(vector) == bytes([0b1000_0001, 0b0100_0000])
    assert sign_bits(np.zeros(3, np.float32)) == b"\x00"  # 0 is not positive


@pytest.fixture(scope="module")
def server(tiny_artifact: Path) -> Iterator[LiveServer]:
    prefix = unique_prefix()
    with LiveServer(artifact=tiny_artifact, redis_url=SHARED_REDIS_URL, cache_prefix=prefix) as live:
        yield live
    delete_prefix(SHARED_REDIS_URL, prefix)


def test_every_encoding_from_the_server_decodes_to_its_float_vector(server: LiveServer) -> None:
    items = [{"id": f"enc-{i}", "text": text} for i, text in enumerate(TEXTS)]
    with server.client() as client:
        floats = client.post("/v1/embed", json={"items": items}).json()
        reference = np.asarray([d["embedding"] for d in floats["data"]], np.float32)
        for encoding in WIRE_ENCODINGS:
            for path, body in (
                ("/v1/embed", {"items": items, "encoding": encoding}),
                ("/v1/items/lookup", {"ids": [item["id"] for item in items], "encoding": encoding}),
            ):
                answer = client.post(path, json=body)
                assert answer.status_code == 200, answer.text
                content = answer.json()
                assert content["encoding"] == encoding and content["dim"] == reference.shape[1]
                for item, vector in zip(content["data"], reference, strict=True):
                    assert ("scale" in item) == (encoding == "int8"), item
                    got = decoded(encoding, item, reference.shape[1])
                    np.testing.assert_array_equal(
                        got, expected(encoding, vector), err_msg=f"{path} {encoding}"
                    )


def test_openai_sdk_still_decodes_base64_and_compact_encodings_are_refused_there(server: LiveServer) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    default = client.embeddings.create(model="m", input=TEXTS)  # the SDK asks for base64 float32
    with server.client() as http:
        floats = http.post("/v1/embed", json={"items": [{"text": t} for t in TEXTS]}).json()
        refused = [
            http.post("/v1/embeddings", json={"input": "a", "encoding_format": encoding})
            for encoding in ("float16", "int8", "binary")
        ]
    np.testing.assert_array_equal(
        np.asarray([d.embedding for d in default.data], np.float32),
        np.asarray([d["embedding"] for d in floats["data"]], np.float32),
    )
    for response in refused:
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["param"] == "encoding_format" and error["message"].startswith("encoding_format")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/embed", {"items": [{"text": "a"}], "encoding": "int4"}),
        ("/v1/embed", {"items": [{"text": "a"}], "encoding": 8}),
        ("/v1/embed", {"items": [{"text": "a"}], "encoding": None}),
        ("/v1/items/lookup", {"ids": ["a"], "encoding": "BINARY"}),
    ],
)
def test_an_unknown_encoding_is_a_422_naming_encoding(server: LiveServer, path: str, body: object) -> None:
    with server.client() as client:
        response = client.post(path, json=body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["param"] == "encoding" and error["message"].startswith("encoding")
