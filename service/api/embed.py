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

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from pydantic import BaseModel
from starlette.types import ASGIApp, Receive, Scope, Send

from artifact.loader import LoadedArtifact
from service.api.admission import Admission
from service.api.disconnect import cancel_on_disconnect
from service.api.encodings import VectorEncoding
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
from service.flow import EmbedOutcome, TruncatedTexts
from service.registry import ServedModel
from service.runtime import ServiceRuntime

Headers = list[tuple[bytes, bytes]]
EMBED, OPENAI = "/v1/embed", "/v1/embeddings"
Handler = Callable[[ServiceRuntime, Scope, Receive], Awaitable[tuple[bytes, Headers]]]


@dataclass(frozen=True)
class EmbedCall:
    """What an admitted request to either embed route asks for."""

    texts: list[str]
    ids: list[str | None] | None  # /v1/embed's item ids; OpenAI bodies have none
    model: str | None
    dimensions: int | None
    encoding: VectorEncoding
    any_model: bool  # the single-model service answers any `model` (/v1/embeddings, for OpenAI clients)
    param: Callable[[int], str]  # names a text in an error
    status: int  # of invalid input: 422, or 400 (OpenAI's) on /v1/embeddings
    render: Callable[[ServedModel, int, EmbedOutcome], bytes]  # the answer's body


async def _admit_embed(admission: Admission, scope: Scope, receive: Receive, body: bytes) -> EmbedCall:
    request = await admission.embed(scope, receive, body)
    ids = [item.id for item in request.items]
    return EmbedCall(
        [item.text for item in request.items],
        ids,
        request.model,
        request.dimensions,
        request.encoding,
        False,
        lambda i: f"items.{i}.text",
        422,
        lambda served, dim, outcome: embed_body(
            served, request.encoding, dim, ids, outcome.rows, outcome.cached
        ),
    )


async def _admit_openai(admission: Admission, scope: Scope, receive: Receive, body: bytes) -> EmbedCall:
    request, texts = await admission.openai(scope, receive, body)
    return EmbedCall(
        texts,
        None,
        request.model,
        request.dimensions,
        request.encoding_format,
        True,
        lambda i: f"input.{i}",
        400,
        lambda served, dim, outcome: openai_body(served, request.encoding_format, dim, outcome.rows),
    )


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


async def _serve_embed(
    runtime: ServiceRuntime,
    scope: Scope,
    receive: Receive,
    route: str,
    admit: Callable[[Admission, Scope, Receive, bytes], Awaitable[EmbedCall]],
) -> tuple[bytes, Headers]:
    """Both embed routes: read the body; a body whose all-hits answer is kept is answered with it;
    else admit, lease the model, run its flow (the wait for the model is cancelled if the client
    hangs up) and render the answer, kept when it can be repeated."""
    request_body = await runtime.admission.read(scope, receive)
    memo = runtime.memo
    if memo is not None:
        kept = memo.get(route, request_body, runtime.models.generation)
        if kept is not None:
            return kept.body, list(kept.headers)
    call = await admit(runtime.admission, scope, receive, request_body)
    generation = runtime.models.generation  # before the model is chosen: a reload after it = stale
    with runtime.models.lease(call.model, any_name=call.any_model) as served:
        dim = _served_dim(served.artifact, call.dimensions, call.status)
        try:
            outcome = await served.flow.embed(
                call.texts, call.ids, guard=lambda work: cancel_on_disconnect(receive, work)
            )
        except TruncatedTexts as exc:
            where = call.param(exc.rows[0])
            raise ApiError(
                call.status,
                f"{where}: longer than the model's {served.max_length} tokens "
                "(MARC_REJECT_TRUNCATED is set: the server embeds no truncated text)",
                code="context_length_exceeded",
                param=where,
            ) from None
        body = call.render(served, dim, outcome)
    headers = timing_headers(
        queue_seconds=outcome.queue_seconds,
        inference_seconds=outcome.inference_seconds,
        cache_hits=outcome.cache_hits,
    )
    if memo is not None and outcome.all_hits:
        memo.put(
            route,
            request_body,
            MemoAnswer(body, tuple(headers), generation, len(outcome.cached), outcome.id_keys),
        )
    return body, headers


async def embed(runtime: ServiceRuntime, scope: Scope, receive: Receive) -> tuple[bytes, Headers]:
    """Embed item texts. Cached vectors are served from the cache; the rest are computed in
    micro-batches. Items with an `id` are also stored under it for `/v1/items/lookup`."""
    return await _serve_embed(runtime, scope, receive, EMBED, _admit_embed)


async def create_embeddings(runtime: ServiceRuntime, scope: Scope, receive: Receive) -> tuple[bytes, Headers]:
    """OpenAI-compatible embeddings. `model` picks a served model (the single-model service answers
    whatever it names); `dimensions`, if given, must be one that model serves. Invalid input is a
    400, as with OpenAI."""
    return await _serve_embed(runtime, scope, receive, OPENAI, _admit_openai)


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
