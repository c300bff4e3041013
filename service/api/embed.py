"""The embed routes - ``POST /v1/embed``, ``/v1/embeddings`` (OpenAI-compatible), ``/v1/items/lookup``
- as one pure-ASGI app in front of FastAPI's routing.

A recommender asks for the same catalogue items again and again, so most requests are answered from
the cache, and for those FastAPI's per-request machinery (routing, dependency solving, JSON parsing
plus a separate validation pass) costs more than the answer. So each request here is admitted once
(`service.api.admission`: key, content type, size, shape, one parse, limits), runs the embed flow once
(`service.flow`: read the cache, compute what is missing, write it back) and gets a body serialised
once. An all-hits answer is kept by its exact request body (`service.api.memo`), so a repeat of
that body is answered with the same bytes after the key, content-type, size and read checks. A
request that waits for the model is cancelled when its client hangs up. Errors have the
shape and codes of `service.api.errors`. Their OpenAPI entries are built from `EMBED_ROUTES`
(`service.api.openapi`); every other path goes on to FastAPI.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from pydantic import BaseModel
from starlette.types import ASGIApp, Receive, Scope, Send

from artifact.loader import LoadedArtifact
from service.api.disconnect import cancel_on_disconnect
from service.api.errors import ApiError, api_error_response, as_api_error
from service.api.memo import MemoAnswer
from service.api.responses import embed_body, json_headers, lookup_body, openai_body, timing_headers
from service.api.schemas import (
    EmbedRequest,
    EmbedResponse,
    LookupRequest,
    LookupResponse,
    OpenAIEmbeddingsRequest,
    OpenAIEmbeddingsResponse,
)
from service.flow import EmbedFlow, EmbedOutcome, TruncatedTexts
from service.registry import ServedModel
from service.runtime import ServiceRuntime

Headers = list[tuple[bytes, bytes]]
EMBED, OPENAI = "/v1/embed", "/v1/embeddings"
Handler = Callable[[ServiceRuntime, Scope, Receive], Awaitable[tuple[bytes, Headers]]]


async def _embedded(
    served: ServedModel,
    texts: Sequence[str],
    ids: Sequence[str | None] | None,
    receive: Receive,
    *,
    param: Callable[[int], str],
    status: int,
) -> EmbedOutcome:
    flow: EmbedFlow = served.flow
    try:
        read = await flow.read(texts, ids)
        outcome = flow.cached_outcome(read)
        if outcome is None:
            work = flow.complete(read)
            # Only work that waits for the model needs watching for a client that hangs up.
            outcome = await (cancel_on_disconnect(receive, work) if read.missing else work)
    except TruncatedTexts as exc:
        where = param(exc.rows[0])
        raise ApiError(
            status,
            f"{where}: longer than the model's {served.max_length} tokens "
            "(MARC_REJECT_TRUNCATED is set: the server embeds no truncated text)",
            code="context_length_exceeded",
            param=where,
        ) from None
    return outcome


def _served_dim(artifact: LoadedArtifact, requested: int | None, status: int) -> int:
    """The vector size to answer with: ``dimensions`` if the model serves it (a nested prefix), else
    the full k. Vectors are cached at full k and sliced per request."""
    if requested is None:
        return artifact.dim
    if requested not in artifact.dimensions:
        allowed = ", ".join(map(str, artifact.dimensions))
        raise ApiError(
            status,
            f"dimensions: this model serves vectors of {allowed} dimensions (got {requested})",
            param="dimensions",
        )
    return requested


def _timing(outcome: EmbedOutcome) -> Headers:
    return timing_headers(
        queue_seconds=outcome.queue_seconds,
        inference_seconds=outcome.inference_seconds,
        cache_hits=outcome.cache_hits,
    )


def _repeat(runtime: ServiceRuntime, route: str, request_body: bytes) -> tuple[bytes, Headers] | None:
    """The kept answer to this exact body (counted by the memo), or None."""
    if runtime.memo is None:
        return None
    answer = runtime.memo.get(route, request_body, runtime.models.generation)
    return None if answer is None else (answer.body, list(answer.headers))


def _answer(
    runtime: ServiceRuntime,
    route: str,
    request_body: bytes,
    generation: int,
    outcome: EmbedOutcome,
    body: bytes,
    keep: bool,
) -> tuple[bytes, Headers]:
    """``body`` with its headers; an all-hits answer (no ids, nothing truncated) is kept for repeats,
    under the registry ``generation`` read before the model was chosen: if a reload came in between,
    the kept answer is stale at once."""
    headers = _timing(outcome)
    if keep and runtime.memo is not None and outcome.all_hits:
        answer = MemoAnswer(body, tuple(headers), generation, len(outcome.cached))
        runtime.memo.put(route, request_body, answer)
    return body, headers


async def embed(runtime: ServiceRuntime, scope: Scope, receive: Receive) -> tuple[bytes, Headers]:
    """Embed item texts. Cached vectors are served from the cache; the rest are computed in
    micro-batches. Items with an `id` are also stored under it for `/v1/items/lookup`."""
    request_body = await runtime.admission.read(scope, receive)
    repeated = _repeat(runtime, EMBED, request_body)
    if repeated is not None:
        return repeated
    request = await runtime.admission.embed(scope, receive, request_body)
    ids = [item.id for item in request.items]
    texts = [item.text for item in request.items]
    generation = runtime.models.generation
    with runtime.models.lease(request.model) as served:
        dim = _served_dim(served.artifact, request.dimensions, 422)
        outcome = await _embedded(served, texts, ids, receive, param=lambda i: f"items.{i}.text", status=422)
        body = embed_body(served, request.encoding, dim, ids, outcome.rows, outcome.cached)
    # An id's key is read every time (it can be re-pointed to another text): never kept.
    keep = all(item_id is None for item_id in ids)
    return _answer(runtime, EMBED, request_body, generation, outcome, body, keep)


async def create_embeddings(runtime: ServiceRuntime, scope: Scope, receive: Receive) -> tuple[bytes, Headers]:
    """OpenAI-compatible embeddings. `model` picks a served model (the single-model service answers
    whatever it names); `dimensions`, if given, must be one that model serves. Invalid input is a
    400, as with OpenAI."""
    request_body = await runtime.admission.read(scope, receive)
    repeated = _repeat(runtime, OPENAI, request_body)
    if repeated is not None:
        return repeated
    request, texts = await runtime.admission.openai(scope, receive, request_body)
    generation = runtime.models.generation
    with runtime.models.lease(request.model, any_name=True) as served:
        dim = _served_dim(served.artifact, request.dimensions, 400)
        outcome = await _embedded(served, texts, None, receive, param=lambda i: f"input.{i}", status=400)
        body = openai_body(served, request.encoding_format, dim, outcome.rows)
    return _answer(runtime, OPENAI, request_body, generation, outcome, body, keep=True)


async def lookup_items(runtime: ServiceRuntime, scope: Scope, receive: Receive) -> tuple[bytes, Headers]:
    """Stored vectors for `ids` of the model `model` names; ids without a vector for it are listed in
    `unknown`. No inference on this path. Answers 503 when the cache is unavailable (there is nothing
    else to look in)."""
    request = await runtime.admission.lookup(scope, receive)
    with runtime.models.lease(request.model) as served:
        dim = _served_dim(served.artifact, request.dimensions, 422)
        found = await served.flow.lookup(request.ids)
        return lookup_body(served, request.encoding, dim, request.ids, found), []


@dataclass(frozen=True)
class EmbedRoute:
    path: str
    handler: Handler
    request: type[BaseModel]
    response: type[BaseModel]
    tag: str
    invalid_status: int  # the status of invalid input: 422, or 400 (OpenAI's) on /v1/embeddings


EMBED_ROUTES = (
    EmbedRoute(EMBED, embed, EmbedRequest, EmbedResponse, "embeddings", 422),
    EmbedRoute(OPENAI, create_embeddings, OpenAIEmbeddingsRequest, OpenAIEmbeddingsResponse, "openai", 400),
    EmbedRoute("/v1/items/lookup", lookup_items, LookupRequest, LookupResponse, "items", 422),
)
_BY_PATH = {route.path: route for route in EMBED_ROUTES}


class EmbedApi:
    """Serves `EMBED_ROUTES`; passes every other request on to ``app``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = _BY_PATH.get(scope["path"]) if scope["type"] == "http" else None
        runtime: ServiceRuntime | None = scope.get("state", {}).get("runtime")
        if route is None or runtime is None:
            await self.app(scope, receive, send)
            return
        try:
            if scope["method"] != "POST":
                raise ApiError(
                    405,
                    f"{scope['method']} {route.path}: method not allowed (use POST)",
                    code="method_not_allowed",
                    headers={"Allow": "POST"},
                )
            body, headers = await route.handler(runtime, scope, receive)
        except Exception as exc:
            await api_error_response(as_api_error(exc))(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 200, "headers": json_headers(body, *headers)})
        await send({"type": "http.response.body", "body": body})
