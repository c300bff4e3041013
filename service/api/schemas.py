"""Request and response bodies (docs/ARCHITECTURE.md, "API"). Field descriptions feed /docs.

Static rules live here (types, empty text, invalid Unicode); the configurable limits (items per
request, characters per text, one text per id) are checked by `service.api.admission` against the
running settings.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError

from service.api.encodings import VectorEncoding

NUL = "\x00"
ENCODING_DESCRIPTION = (
    "How vectors are returned: `float` = JSON numbers; `base64` = base64 of little-endian float32 "
    "bytes (4·dim bytes, `numpy.frombuffer(base64.b64decode(s), '<f4')`); `float16` (alias "
    "`base64_fp16`) = base64 of little-endian float16 bytes (half the size, ~3 significant digits); "
    "`int8` = base64 of int8 values q with a float32 `scale` next to the embedding (vector = q · "
    "scale, dim + 4 bytes); `binary` = base64 of the sign bits (1 = positive), packed most significant "
    "bit first (dim/8 bytes). docs/api.md has a numpy decoder for each."
)
DIMENSIONS_DESCRIPTION = (
    "Size of the returned vectors: one of the served model's nested prefix sizes (`/v1/models` lists "
    "them as `dimensions`); the answer is the first `dimensions` components of the full vector, "
    "encoded after slicing. Default: the full k."
)


def _valid_unicode(value: str) -> str:
    # JSON can carry lone surrogates ("\ud800"); they cannot be tokenised, hashed or echoed as UTF-8.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"contains invalid Unicode (lone surrogate at position {exc.start})") from None
    return value


def _non_blank_text(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty or whitespace only")
    # NUL is never item text: it marks a binary or truncated payload (C strings end there).
    if NUL in value:
        raise ValueError(f"must not contain NUL characters (\\u0000 at position {value.index(NUL)})")
    return _valid_unicode(value)


def _id_from_int(value: Any) -> Any:
    # Integer ids are common in catalogues; they are served back as strings.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


# The documented schema says what the validator enforces: no NUL, and at least one character that
# str.strip() keeps (Python also strips \x1c-\x1f and \x85, which JSON Schema regexes do not count as \s).
NON_BLANK_STRING_SCHEMA = {
    "type": "string",
    "minLength": 1,
    "pattern": r"^[^\x00]*[^\s\x00\x1c-\x1f\x85][^\x00]*$",
}
ItemText = Annotated[str, AfterValidator(_non_blank_text), WithJsonSchema(NON_BLANK_STRING_SCHEMA)]
ItemId = Annotated[
    str,
    BeforeValidator(_id_from_int),
    Field(min_length=1, max_length=512),
    AfterValidator(_valid_unicode),
    WithJsonSchema({"anyOf": [{"type": "string", "minLength": 1, "maxLength": 512}, {"type": "integer"}]}),
]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- POST /v1/embed -------------------------------------------------------------------------------


class EmbedItem(_Request):
    id: ItemId | None = Field(
        None,
        description="Optional item id (string, or integer served back as a string). When given, the "
        "vector is also stored under this id for `POST /v1/items/lookup`.",
        examples=["sku-1"],
    )
    text: ItemText = Field(
        description="Item text (title, description, attributes). Unicode NFC-normalised and trimmed "
        "before embedding; a text longer than the model's max_length tokens is embedded truncated "
        "(`truncated: true` in the answer), or refused when MARC_REJECT_TRUNCATED is set. Items with "
        "the same id must have the same text.",
        examples=["Wireless waterproof bluetooth speaker, blue, 39 USD"],
    )


class EmbedRequest(_Request):
    items: list[EmbedItem] = Field(min_length=1, description="Items to embed, answered in this order.")
    encoding: VectorEncoding = Field("float", description=ENCODING_DESCRIPTION)
    dimensions: int | None = Field(None, description=DIMENSIONS_DESCRIPTION)
    model: str | None = Field(
        None,
        description="Served model name (GET /v1/models); missing = the default model (MARC_DEFAULT_MODEL). "
        "An unknown name is a 404 listing the served names.",
        examples=["default"],
    )


class EmbeddedItem(BaseModel):
    id: str | None = Field(description="The item id from the request, if any.")
    embedding: list[float] | str = Field(description="The vector (list of floats or a base64 string).")
    scale: float | None = Field(
        None, description="`int8` only (absent otherwise): the vector is the int8 values times this."
    )
    cached: bool = Field(description="True when the vector came from the cache, not the model.")
    tokens: int = Field(description="Tokens of the text the model embedded (at most its max_length).")
    truncated: bool = Field(
        description="True when the text was longer than the model's max_length tokens and only its "
        "first max_length tokens were embedded."
    )


class EmbedResponse(BaseModel):
    model: str = Field(description="Name of the model that answered (its served name).")
    fingerprint: str = Field(description="Fingerprint of the served model variant's vectors.")
    dim: int = Field(description="Size of the returned vectors (`dimensions`, or the full k).")
    encoding: VectorEncoding = Field(description="Encoding of `embedding` in `data`.")
    data: list[EmbeddedItem] = Field(description="One entry per request item, in request order.")


# --- POST /v1/items/lookup ------------------------------------------------------------------------


class LookupRequest(_Request):
    ids: list[ItemId] = Field(min_length=1, description="Item ids to look up (no inference is done).")
    encoding: VectorEncoding = Field("float", description=ENCODING_DESCRIPTION)
    dimensions: int | None = Field(None, description=DIMENSIONS_DESCRIPTION)
    model: str | None = Field(
        None,
        description="Served model name (GET /v1/models) whose stored vectors to read; missing = the "
        "default model (MARC_DEFAULT_MODEL). An unknown name is a 404 listing the served names.",
        examples=["default"],
    )


class FoundItem(BaseModel):
    id: str = Field(description="Item id.")
    embedding: list[float] | str = Field(description="The stored vector.")
    scale: float | None = Field(None, description="`int8` only: the vector is the int8 values times this.")


class LookupResponse(BaseModel):
    model: str = Field(description="Name of the served model.")
    fingerprint: str = Field(description="Fingerprint of the served model variant's vectors.")
    dim: int = Field(description="Size of the returned vectors (`dimensions`, or the full k).")
    encoding: VectorEncoding = Field(description="Encoding of `embedding` in `data`.")
    data: list[FoundItem] = Field(description="Ids that have a stored vector, in request order.")
    unknown: list[str] = Field(description="Ids with no stored vector for this model.")


# --- POST /v1/embeddings (OpenAI-compatible) ----------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _inputs_as_list(value: Any) -> Any:
    """A single text or a single token array becomes a one-element list (answers are indexed the
    same way)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(_is_number(x) for x in value):
        return [value]
    return value


def _text_or_token_ids(value: Any) -> str | list[int]:
    """An input: a text (the item text rules) or a token-id array (decoded by `service.api.admission`,
    which also reports ids the encoding does not know)."""
    if isinstance(value, str):
        return _non_blank_text(value)
    if isinstance(value, list) and value:
        return value
    raise PydanticCustomError("input_type", "Input should be a text or a non-empty array of token ids")


TOKEN_IDS_SCHEMA = {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1}
OpenAIInput = Annotated[
    list[Annotated[str | list[int], PlainValidator(_text_or_token_ids)]],
    BeforeValidator(_inputs_as_list),
    Field(min_length=1),
    WithJsonSchema(
        {
            "anyOf": [
                NON_BLANK_STRING_SCHEMA,
                {"type": "array", "items": NON_BLANK_STRING_SCHEMA, "minItems": 1},
                TOKEN_IDS_SCHEMA,
                {"type": "array", "items": TOKEN_IDS_SCHEMA, "minItems": 1},
            ]
        }
    ),
]


class OpenAIEmbeddingsRequest(BaseModel):
    # Unknown OpenAI fields (e.g. `user`) are accepted and ignored, as clients send them.
    model_config = ConfigDict(extra="ignore")

    input: OpenAIInput = Field(
        description="A text, a list of texts, a token-id array or a list of them (token ids of the "
        "server's MARC_OPENAI_TOKEN_ENCODING, cl100k_base by default, as LangChain sends; decoded to text "
        "and embedded like it). Errors name `input.<index>`; a single input is index 0.",
        examples=["Wireless waterproof bluetooth speaker"],
    )
    model: str | None = Field(
        None,
        description="Served model name (GET /v1/models); missing = the default model. An unknown name is "
        "a 404 listing the served names, except in the single-model service (MARC_ARTIFACT), which "
        "answers whatever is named, as OpenAI clients send their own model names.",
    )
    encoding_format: Literal["float", "base64"] = Field(
        "float",
        description="`float`, or `base64` of little-endian float32 bytes (the openai SDK default). The "
        "compact encodings (`float16`, `int8`, `binary`) are on `POST /v1/embed` only: OpenAI's "
        "embedding object has no place for an int8 scale, and its clients decode base64 as float32.",
    )
    dimensions: int | None = Field(None, description=DIMENSIONS_DESCRIPTION)
    user: str | None = Field(None, description="Ignored.")


class OpenAIEmbedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int = Field(description="Position of the input.")
    embedding: list[float] | str = Field(description="The vector (floats or base64 float32).")


class OpenAIUsage(BaseModel):
    prompt_tokens: int = Field(
        description="Tokens the model embedded, summed over the inputs (its own tokenizer, after truncation)."
    )
    total_tokens: int = Field(description="Same as prompt_tokens.")


class OpenAIEmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIEmbedding]
    model: str
    usage: OpenAIUsage


# --- GET /v1/models -------------------------------------------------------------------------------


class ModelCard(BaseModel):
    id: str = Field(description="Model name (use it as `model` in /v1/embeddings).")
    object: Literal["model"] = "model"
    created: int = Field(description="Export time, Unix seconds.")
    owned_by: str = "marc-serve"
    fingerprint: str = Field(description="Fingerprint of the served variant's vectors.")
    variant: str = Field(description="Served precision variant: fp32, int8 or fp16.")
    variant_choice: dict[str, Any] = Field(
        description="Why this variant: `rule` (set = MARC_VARIANT, provider = auto on CUDA, no-int8 = "
        "the artifact has no per-row int8, measured = auto on CPU), `why` in words; a measured choice "
        "also has the median fp32 and int8 run times at load (`fp32_ms`, `int8_ms`, `int8_speedup`)."
    )
    provider: str = Field(description="ONNX Runtime execution provider in use.")
    serving: dict[str, Any] = Field(
        description="The batching settings resolved for the provider: max_batch_size, max_batch_tokens, "
        "model_runners, workers, io_binding, and `auto` (the ones left at auto)."
    )
    dim: int = Field(description="Vector size k.")
    dimensions: list[int] = Field(
        description="The sizes `dimensions` may ask for: the nested prefixes the model was trained "
        "with (`marc train --nested-dims`), or just k."
    )
    max_length: int = Field(description="Tokens per text the model embeds (longer texts are truncated).")
    default: bool = Field(description="True for the model of requests that name none.")
    manifest: dict[str, Any] = Field(description="The artifact's manifest.json.")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# --- health ---------------------------------------------------------------------------------------


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"


class CacheState(BaseModel):
    backend: Literal["redis", "memory"] = Field(description="redis, or the in-process LRU (memory).")
    status: Literal["ok", "skipped"] = Field(
        description="skipped = Redis failed and is not being asked: requests are served by the model "
        "while one request probes Redis every MARC_CACHE_RETRY_SECONDS."
    )


class ReadyResponse(BaseModel):
    status: Literal["ready", "not ready"]
    reason: str | None = Field(None, description="Why the service is not ready.")
    model: str | None = None
    fingerprint: str | None = None
    variant: str | None = None
    provider: str | None = None
    queue_depth: int | None = Field(None, description="Items waiting for the models, all models summed.")
    models: list[str] | None = Field(None, description="Served model names; `model` is the default one.")
    cache: CacheState | None = None


# --- admin ----------------------------------------------------------------------------------------


class ModelChangeBody(BaseModel):
    name: str = Field(description="Served model name.")
    change: Literal["added", "swapped", "unchanged", "removed"]
    fingerprint: str | None = Field(description="Fingerprint served now (null: removed).")
    previous_fingerprint: str | None = Field(description="Fingerprint served before (null: added).")


class ReloadResponse(BaseModel):
    status: Literal["reloaded", "unchanged"] = Field(
        description="reloaded: a model was added, swapped or removed; unchanged: nothing differed."
    )
    default: str = Field(description="The default model after the reload.")
    models: list[ModelChangeBody]
    seconds: float = Field(description="How long the reload took (loading, checks, retiring the old).")


# --- errors ---------------------------------------------------------------------------------------


class ErrorBody(BaseModel):
    message: str = Field(description="What is wrong, naming the field.")
    type: str = Field(description="Error class, e.g. invalid_request_error, overloaded.")
    param: str | None = Field(None, description="The offending field, dotted (e.g. items.2.text).")
    code: str = Field(description="What exactly, e.g. invalid_value, too_many_items, invalid_api_key.")


class ErrorResponse(BaseModel):
    error: ErrorBody
