"""Admission: what every embed route does before it reads the cache, cheapest checks first, so a bad
request costs as little as possible and nothing is built per item for a request that is refused:

 1. the API key (a header)                                        401
 2. the content type                                              415
 3. the declared size (Content-Length) against the body limit     413
 4. the body, read within the body-read timeout                   408; 413 once it grows past the limit
 5. its shape: the items in its list, its JSON values (json_shape)
 6. one parse and validation with the route's model
 7. the route's own limits: items, characters per text, one text per id, token arrays decoded

Refusals in 5-7 are 422 naming the field, 400 on the OpenAI route (OpenAI's status for invalid input).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from pydantic import BaseModel, ValidationError
from starlette.types import Receive, Scope

from service.api import json_shape
from service.api.auth import bearer_token, check_api_key
from service.api.disconnect import ClientDisconnected
from service.api.errors import ApiError, validation_error
from service.api.schemas import NUL, EmbedRequest, LookupRequest, OpenAIEmbeddingsRequest
from service.api.token_ids import TokenDecoder
from service.cache.keys import normalise_text
from service.settings import Settings

Model = TypeVar("Model", bound=BaseModel)

# OpenAI's own limit on the tokens of one request; it bounds the JSON values of token arrays.
MAX_TOKEN_IDS = 300_000
# JSON values per item a well-formed request needs at most (an item object with id and text is 3).
VALUES_PER_ITEM = 8
SPARE_VALUES = 64
# Token arrays up to this many ids are decoded on the event loop; more in a worker thread.
DECODE_INLINE_IDS = 20_000
# Bodies above this are scanned and parsed one at a time (milliseconds each at the body limit).
BIG_BODY_BYTES = 64 * 1024
# How often late body reads are looked for: a slow upload gets its 408 within this after its deadline.
SWEEP_SECONDS = 0.25
CHECK_STRINGS = "check_embedding_ctx_length=False"
# The rest of a body that was refused is not read: the connection cannot carry another request.
CLOSE = {"Connection": "close"}
_READ_HEADERS = frozenset({b"authorization", b"content-type", b"content-length"})


class ReadDeadlines:
    """Body reads in progress and their deadlines; a sweep every `SWEEP_SECONDS` cancels the late ones.
    A timer per request (asyncio.timeout) would cost about a tenth of answering a cache hit."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._deadlines: dict[asyncio.Task[object], float] = {}
        self._expired: set[asyncio.Task[object]] = set()
        self._sweeper: asyncio.Task[None] | None = None

    def watch(self, task: asyncio.Task[object]) -> None:
        self._deadlines[task] = time.monotonic() + self.seconds
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep(), name="marc-body-reads")

    def done(self, task: asyncio.Task[object]) -> bool:
        """Stop watching ``task``; True (once) if its read was cancelled for being late."""
        self._deadlines.pop(task, None)
        if task in self._expired:
            self._expired.discard(task)
            task.uncancel()  # the cancellation was ours and is answered with a 408
            return True
        return False

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            now = time.monotonic()
            for task, deadline in list(self._deadlines.items()):
                if deadline <= now:
                    del self._deadlines[task]
                    self._expired.add(task)
                    task.cancel()

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()


def _headers(scope: Scope) -> dict[bytes, str]:
    """The headers admission reads (ASGI names are lower case), in one pass over the raw list."""
    return {name: value.decode("latin-1") for name, value in scope["headers"] if name in _READ_HEADERS}


def _is_json(content_type: str | None) -> bool:
    if not content_type:
        return False
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


class Admission:
    def __init__(self, settings: Settings, token_decoder: TokenDecoder | None) -> None:
        self._api_key = settings.api_key
        self.body_limit = settings.body_limit_bytes
        self._reads = ReadDeadlines(settings.body_read_timeout_seconds)
        self._max_items = settings.max_items_per_request
        self._max_inputs = settings.max_openai_inputs
        self._max_chars = settings.max_text_chars
        self._decoder = token_decoder
        self._big_bodies = asyncio.Semaphore(1)

    async def embed(self, scope: Scope, receive: Receive, body: bytes | None = None) -> EmbedRequest:
        """The admitted request (``body``: already read by `read`)."""
        request = await self._admit(EmbedRequest, scope, receive, "items", self._max_items, 422, body)
        if len(request.items) > self._max_items:  # only a list key spelled with escapes gets here
            raise self._too_many("items", len(request.items), self._max_items, 422)
        self._check_chars([item.text for item in request.items], lambda i: f"items.{i}.text", 422)
        self._check_ids(request)
        return request

    async def lookup(self, scope: Scope, receive: Receive) -> LookupRequest:
        request = await self._admit(LookupRequest, scope, receive, "ids", self._max_items, 422)
        if len(request.ids) > self._max_items:
            raise self._too_many("ids", len(request.ids), self._max_items, 422)
        return request

    async def openai(
        self, scope: Scope, receive: Receive, body: bytes | None = None
    ) -> tuple[OpenAIEmbeddingsRequest, list[str]]:
        """The request and its inputs as texts (token arrays decoded)."""
        request = await self._admit(
            OpenAIEmbeddingsRequest, scope, receive, "input", self._max_inputs, 400, body
        )
        if len(request.input) > self._max_inputs:
            raise self._too_many("input", len(request.input), self._max_inputs, 400)
        texts = await self._decode(request.input)
        self._check_chars(texts, lambda i: f"input.{i}", 400)
        return request, texts

    # --- the steps every route shares -----------------------------------------------------------

    async def read(self, scope: Scope, receive: Receive) -> bytes:
        """Steps 1-4: the body of a request whose key, content type and declared size pass."""
        headers = _headers(scope)
        check_api_key(self._api_key, bearer_token(headers.get(b"authorization")))
        content_type = headers.get(b"content-type")
        if not _is_json(content_type):
            raise ApiError(
                415,
                f"content-type: must be application/json (got {content_type or 'none'})",
                type="unsupported_media_type",
                code="unsupported_media_type",
                param="content-type",
            )
        declared = headers.get(b"content-length", "")
        if declared.isdigit() and int(declared) > self.body_limit:
            raise self._too_large()
        return await self._read(receive)

    async def _admit(
        self,
        model: type[Model],
        scope: Scope,
        receive: Receive,
        field: str,
        max_items: int,
        status: int,
        body: bytes | None = None,
    ) -> Model:
        if body is None:
            body = await self.read(scope, receive)
        if len(body) <= BIG_BODY_BYTES:
            return self._parse(model, body, field, max_items, status)
        # Big bodies take turns, and each turn starts behind the requests already waiting, so a
        # light request (/healthz, a cache hit) waits for one big body's scan and parse, never for
        # all that arrived together.
        async with self._big_bodies:
            await asyncio.sleep(0)
            return self._parse(model, body, field, max_items, status)

    def _parse(self, model: type[Model], body: bytes, field: str, max_items: int, status: int) -> Model:
        """Steps 5 and 6: the shape scan, then the one parse."""
        token_values = MAX_TOKEN_IDS if model is OpenAIEmbeddingsRequest else 0
        refusal = json_shape.refusal(
            body,
            list_field=field,
            max_items=max_items,
            max_values=max_items * VALUES_PER_ITEM + token_values + SPARE_VALUES,
            numbers_are_one_item=model is OpenAIEmbeddingsRequest,
        )
        if refusal == "too_many_items":
            raise self._too_many(field, None, max_items, status)
        if refusal is not None:
            what = "nested too deeply" if refusal == "too_deep" else "more JSON values than a request needs"
            raise ApiError(status, f"body: {what}", code="body_too_complex", param="body")
        try:
            return model.model_validate_json(body)
        except ValidationError as exc:
            raise validation_error(exc.errors(include_input=False), status) from None

    async def _read(self, receive: Receive) -> bytes:
        """The whole body, within the read timeout and the size limit."""
        body = bytearray()
        task: asyncio.Task[object] = asyncio.current_task()  # type: ignore[assignment]
        self._reads.watch(task)
        try:
            more = True
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ClientDisconnected()
                body += message.get("body", b"")
                more = message.get("more_body", False)
                if len(body) > self.body_limit:
                    raise self._too_large()
        except asyncio.CancelledError:
            if not self._reads.done(task):
                raise
            raise ApiError(
                408,
                f"body: not received within {self._reads.seconds:g} s",
                type="request_timeout",
                code="body_timeout",
                param="body",
                headers=CLOSE,
            ) from None
        finally:
            self._reads.done(task)  # however the read ended (idempotent)
        return bytes(body)

    def close(self) -> None:
        self._reads.close()

    def _too_large(self) -> ApiError:
        return ApiError(
            413,
            f"body: larger than the {self.body_limit}-byte limit",
            type="payload_too_large",
            code="body_too_large",
            param="body",
            headers=CLOSE,
        )

    @staticmethod
    def _too_many(field: str, count: int | None, limit: int, status: int) -> ApiError:
        got = f" (got {count})" if count is not None else ""
        noun = {"items": "items", "ids": "ids", "input": "inputs"}[field]
        return ApiError(
            status, f"{field}: at most {limit} {noun} per request{got}", code="too_many_items", param=field
        )

    def _check_chars(self, texts: Sequence[str], param: Callable[[int], str], status: int) -> None:
        for index, text in enumerate(texts):
            if len(text) > self._max_chars:  # one is enough to name the problem; don't echo thousands
                raise ApiError(
                    status,
                    f"{param(index)}: at most {self._max_chars} characters (got {len(text)})",
                    code="text_too_long",
                    param=param(index),
                )

    @staticmethod
    def _check_ids(request: EmbedRequest) -> None:
        """One id, one text: an id given twice with different texts would store whichever came last."""
        first_text: dict[str, str] = {}
        first_index: dict[str, int] = {}
        for index, item in enumerate(request.items):
            if item.id is None:
                continue
            text = first_text.setdefault(item.id, item.text)
            first = first_index.setdefault(item.id, index)
            if text != item.text and normalise_text(text) != normalise_text(item.text):
                raise ApiError(
                    422,
                    f"items.{index}.id: the same id as items.{first} with a different text",
                    code="duplicate_id",
                    param=f"items.{index}.id",
                )

    async def _decode(self, inputs: Sequence[str | list[int]]) -> list[str]:
        arrays = [(index, value) for index, value in enumerate(inputs) if isinstance(value, list)]
        if not arrays:
            return list(inputs)  # type: ignore[arg-type]  # all texts
        if self._decoder is None:
            raise ApiError(
                400,
                "input: token-id arrays are not accepted by this server (no tiktoken encoding); send "
                f"texts, e.g. LangChain's OpenAIEmbeddings({CHECK_STRINGS})",
                code="token_arrays_unsupported",
                param="input",
            )
        values = [value for _, value in arrays]
        ids = sum(len(value) for value in values)
        decoded = (
            self._decoder.decode(values)
            if ids <= DECODE_INLINE_IDS
            else await asyncio.to_thread(self._decoder.decode, values)
        )
        texts: list[str] = list(inputs)  # type: ignore[arg-type]  # the arrays are replaced below
        for (index, _), text in zip(arrays, decoded, strict=True):
            problem = None
            if text is None:
                problem = f"not an array of {self._decoder.name} token ids"
            elif not text.strip() or NUL in text:
                problem = "its tokens decode to an empty text or one with a NUL character"
            if problem:
                raise ApiError(
                    400, f"input.{index}: {problem} (or send texts: {CHECK_STRINGS})", param=f"input.{index}"
                )
            texts[index] = text  # type: ignore[assignment]
        return texts
