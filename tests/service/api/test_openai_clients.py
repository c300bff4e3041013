"""OpenAI clients beyond plain strings, against a live server: the `openai` SDK with OpenAI's limit of
2,048 inputs and with token-id arrays, OpenAI's error statuses and string codes, and LangChain's
`OpenAIEmbeddings` as users run it - by default it sends tiktoken cl100k_base token ids, 1,000 inputs
per request - and with ``check_embedding_ctx_length=False`` (strings)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import openai
import pytest
import tiktoken
from langchain_openai import OpenAIEmbeddings

from tests.support.servers import LiveServer
from tests.support.tiktoken_cache import seed_tiktoken_cache

TEXTS = [
    f"catalogue item {i}: {('oak', 'linen', 'steel', 'wool')[i % 4]} {('chair', 'lamp', 'rug')[i % 3]}"
    for i in range(2048)
]


@pytest.fixture(scope="module")
def server(tiny_artifact: Path) -> Iterator[LiveServer]:
    with LiveServer(artifact=tiny_artifact) as live:
        yield live


@pytest.fixture
def tiktoken_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """LangChain tokenises on the client with tiktoken; this machine is offline."""
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(seed_tiktoken_cache(tmp_path)))


def _reference(live: LiveServer, texts: list[str]) -> np.ndarray:
    with live.client() as client:
        vectors = []
        for start in range(0, len(texts), 256):
            items = [{"text": text} for text in texts[start : start + 256]]
            vectors += [
                d["embedding"] for d in client.post("/v1/embed", json={"items": items}).json()["data"]
            ]
    return np.array(vectors)


def _requests(live: LiveServer) -> float:
    return live.metric("marc_request_duration_seconds_count", route="/v1/embeddings", status="200")


def test_openai_sdk_with_2048_inputs_and_with_token_arrays(server: LiveServer) -> None:
    sdk = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    expected = _reference(server, TEXTS)
    full = sdk.embeddings.create(model="m", input=TEXTS)  # OpenAI's limit: 2,048 inputs
    encoding = tiktoken.get_encoding("cl100k_base_offline")
    as_tokens = sdk.embeddings.create(model="m", input=[encoding.encode(text) for text in TEXTS[:5]])
    one_array = sdk.embeddings.create(model="m", input=encoding.encode(TEXTS[7]))
    np.testing.assert_allclose([d.embedding for d in full.data], expected, atol=1e-6)
    np.testing.assert_allclose([d.embedding for d in as_tokens.data], expected[:5], atol=1e-6)
    np.testing.assert_allclose(one_array.data[0].embedding, expected[7], atol=1e-6)


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"input": [*TEXTS, "one more"]}, "input", "too_many_items"),
        ({"input": ["fine", " "]}, "input.1", "invalid_value"),
        ({"input": [[1, 2], [100256]]}, "input.1", "invalid_value"),
        ({"input": "fine", "dimensions": 3}, "dimensions", "invalid_value"),
    ],
)
def test_openai_sdk_sees_openai_errors(server: LiveServer, body: dict, param: str, code: str) -> None:
    sdk = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.embeddings.create(model="m", **body)
    error = refused.value
    assert error.status_code == 400 and error.code == code and error.param == param
    assert isinstance(error.body, dict) and error.body["message"].startswith(param)


def test_langchain_openai_embeddings_with_its_defaults(server: LiveServer, tiktoken_offline: None) -> None:
    texts = TEXTS[:1200]
    expected = _reference(server, texts)
    before = _requests(server)
    embeddings = OpenAIEmbeddings(
        model="text-embedding-3-small", base_url=f"{server.url}/v1", api_key="unused", max_retries=0
    )  # token ids (tiktoken cl100k_base), 1,000 inputs per request
    documents = embeddings.embed_documents(texts)
    query = embeddings.embed_query(texts[3])
    assert _requests(server) - before == 3  # 1,000 + 200 documents, 1 query
    np.testing.assert_allclose(documents, expected, atol=1e-6)
    np.testing.assert_allclose(query, expected[3], atol=1e-6)


def test_langchain_openai_embeddings_sending_strings(server: LiveServer) -> None:
    texts = TEXTS[:50]
    embeddings = OpenAIEmbeddings(
        model="text-embedding-3-small",
        base_url=f"{server.url}/v1",
        api_key="unused",
        max_retries=0,
        check_embedding_ctx_length=False,  # no tiktoken on the client at all
    )
    np.testing.assert_allclose(embeddings.embed_documents(texts), _reference(server, texts), atol=1e-6)


def test_without_an_encoding_token_arrays_get_a_400_naming_the_client_setting(
    tiny_artifact: Path, tiktoken_offline: None
) -> None:
    with LiveServer(artifact=tiny_artifact, openai_token_encoding="") as live:
        embeddings = OpenAIEmbeddings(
            model="text-embedding-3-small", base_url=f"{live.url}/v1", api_key="unused", max_retries=0
        )
        with pytest.raises(openai.BadRequestError) as refused:
            embeddings.embed_documents(["red shoes"])
    assert refused.value.status_code == 400 and refused.value.code == "token_arrays_unsupported"
    assert "check_embedding_ctx_length=False" in str(refused.value)
