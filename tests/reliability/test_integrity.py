"""Never serve a wrong vector: `marc serve` refuses a tampered, truncated or inconsistent artifact
(the message names the file); two models on one Redis never read each other's vectors; a cached
value of the wrong byte length is a miss that is recomputed and overwritten, never served."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import redis

from artifact.manifest import read_manifest
from artifact.names import MANIFEST_FILE
from service.cache.keys import KeySpace
from service.cache.values import ValueCodec
from tests.support.artifacts import (
    edit_tokenizer,
    flip_model_byte,
    rename_graph_input,
    truncate_model,
    wrong_fingerprint,
)
from tests.support.redis_server import RedisProcess, unique_prefix
from tests.support.reference import onnx_reference
from tests.support.reliability_report import record
from tests.support.servers import LiveServer, ServeProcess

# --- the service's start path refuses a bad artifact ------------------------------------------------


BAD_ARTIFACTS: list[tuple[str, Callable[[Path], None], str, str]] = [
    # id, damage, file the message must name, words it must contain
    ("tampered-model", flip_model_byte, "model.onnx", "sha256"),
    ("truncated-model", truncate_model, "model.onnx", "truncated"),
    ("edited-tokenizer", edit_tokenizer, "tokenizer.json", "sha256"),
    ("wrong-fingerprint", wrong_fingerprint, MANIFEST_FILE, "fingerprint"),
    ("wrong-input-names", rename_graph_input, "model.onnx", "graph inputs"),
]


@pytest.mark.parametrize(
    ("damage", "file", "words"), [b[1:] for b in BAD_ARTIFACTS], ids=[b[0] for b in BAD_ARTIFACTS]
)
def test_marc_serve_refuses_a_bad_artifact(
    tiny_artifact: Path, tmp_path: Path, damage: Callable[[Path], None], file: str, words: str
) -> None:
    artifact = tmp_path / "artifact"
    shutil.copytree(tiny_artifact, artifact)
    damage(artifact)
    server = ServeProcess(tmp_path / "serve.log", artifact=artifact, variant="fp32")
    server.start(wait_ready=False)
    try:
        exit_code = server.wait_exit(60)
    finally:
        server.stop()
    log = server.log()
    assert exit_code == 2
    assert f"{artifact / file}:" in log and words in log, log
    # One clear line, before the server starts: no traceback, no uvicorn start-up.
    assert "Traceback" not in log and "Application startup" not in log, log
    assert [line for line in log.splitlines() if line.startswith("marc serve: refusing to start: ")], log
    record("integrity_refusals", **{damage.__name__.strip("_").replace("_", " "): "refused, file named"})


# --- cache keys carry the model fingerprint ----------------------------------------------------------


def _embed(live: LiveServer, texts: list[str], ids: list[str] | None = None) -> dict:
    items = [{"text": t} | ({"id": i} if ids else {}) for t, i in zip(texts, ids or texts, strict=True)]
    with live.client() as client:
        response = client.post("/v1/embed", json={"items": items})
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.slow
def test_two_artifacts_on_one_redis_never_share_vectors(
    tiny_artifact: Path, tiny_artifact_other: Path
) -> None:
    texts = [f"shared catalogue text {i}" for i in range(8)]
    ids = [f"sku-{i}" for i in range(8)]
    prefix = unique_prefix()
    with RedisProcess() as own_redis:
        common = {"redis_url": own_redis.url, "cache_prefix": prefix}
        with LiveServer(artifact=tiny_artifact, **common) as first:
            by_first = _embed(first, texts, ids)
            again_first = _embed(first, texts)
        with LiveServer(artifact=tiny_artifact_other, **common) as second:
            by_second = _embed(second, texts)
            with second.client() as client:
                lookup = client.post("/v1/items/lookup", json={"ids": ids}).json()
        keys = redis.Redis.from_url(own_redis.url).keys(f"{prefix}:*")
    first_vectors = np.array([d["embedding"] for d in by_first["data"]])
    second_vectors = np.array([d["embedding"] for d in by_second["data"]])
    namespaces = {key.decode().split(":")[1] for key in keys}
    record(
        "two_models_one_redis",
        texts=len(texts),
        hits_for_the_same_model=sum(d["cached"] for d in again_first["data"]),
        hits_for_the_other_model=sum(d["cached"] for d in by_second["data"]),
        ids_visible_to_the_other_model=len(lookup["data"]),
        key_namespaces=len(namespaces),
    )
    assert by_first["fingerprint"] != by_second["fingerprint"]
    assert all(d["cached"] for d in again_first["data"])  # the cache works ...
    assert not any(d["cached"] for d in by_second["data"])  # ... but never across models
    np.testing.assert_allclose(first_vectors, onnx_reference(tiny_artifact, texts), atol=1e-5)
    np.testing.assert_allclose(second_vectors, onnx_reference(tiny_artifact_other, texts), atol=1e-5)
    assert lookup["data"] == [] and lookup["unknown"] == ids
    assert namespaces == {by_first["fingerprint"][:16], by_second["fingerprint"][:16]}


def test_cached_bytes_of_the_wrong_length_are_recomputed_not_served(tiny_artifact: Path) -> None:
    dim = read_manifest(tiny_artifact).dim
    value_bytes = ValueCodec("float32", dim).value_bytes  # 4·dim + the 4-byte token trailer
    # Empty, one byte, one short, one long, a bare float32 vector (the layout before the trailer),
    # an fp16-sized value of the right dim, twice the size.
    wrong_lengths = [0, 1, value_bytes - 1, value_bytes + 1, 4 * dim, 2 * dim + 4, 2 * value_bytes]
    texts = [f"corrupted entry {n}" for n in wrong_lengths]
    ids = [f"corrupt-{n}" for n in wrong_lengths]
    prefix = unique_prefix()
    with RedisProcess() as own_redis:
        store = redis.Redis.from_url(own_redis.url)
        with LiveServer(artifact=tiny_artifact, redis_url=own_redis.url, cache_prefix=prefix) as live:
            keys = KeySpace(prefix, _embed(live, ["warm-up"])["fingerprint"])
            for text, item_id, length in zip(texts, ids, wrong_lengths, strict=True):
                store.set(keys.text_key(text), b"\x7f" * length)
                store.set(keys.id_key(item_id), b"\x7f" * length)
            with live.client() as client:
                lookup = client.post("/v1/items/lookup", json={"ids": ids}).json()
            body = _embed(live, texts)
            misses = live.metric("marc_cache_requests_total", result="miss")
        stored = [len(store.get(keys.text_key(text)) or b"") for text in texts]
    record(
        "wrong_length_values",
        lengths_tried=wrong_lengths,
        served_from_cache=sum(d["cached"] for d in body["data"]),
        returned_by_lookup=len(lookup["data"]),
        rewritten_with_the_right_length=sum(n == value_bytes for n in stored),
    )
    assert lookup["data"] == [] and lookup["unknown"] == ids
    assert not any(d["cached"] for d in body["data"])
    np.testing.assert_allclose(
        np.array([d["embedding"] for d in body["data"]]), onnx_reference(tiny_artifact, texts), atol=1e-5
    )
    assert misses >= len(texts)
    assert stored == [value_bytes] * len(texts)  # the bad values were replaced by the recomputed vectors
