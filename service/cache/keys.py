"""Cache key spaces and the text normalisation that decides when two texts share a vector.

Text keys: ``<prefix>:<fingerprint[:16]>:<format>:t:<sha256(normalised text)>``
Id keys:   ``<prefix>:<fingerprint[:16]>:<format>:i:<item id>``
``<format>`` names the value layout (`service.cache.values`): ``f32t`` (float32 vector + token trailer)
or ``f16t`` with ``MARC_CACHE_DTYPE=float16``.

The fingerprint is the served model variant's, so a new model can never read an old model's vectors;
values of another layout (float16 vs float32, or the layout before the token trailer, under
``<prefix>:<fingerprint[:16]>[:f16]``) live in other key spaces, so they never mix - also not while
replicas of two versions share a Redis during a rolling update.
"""

from __future__ import annotations

import hashlib
import unicodedata
from dataclasses import dataclass
from functools import cached_property

FINGERPRINT_CHARS = 16
VALUE_FORMATS = {"float32": "f32t", "float16": "f16t"}
# Key spaces of the layout before the token trailer (no tag = float32): never read any more, but still
# in a Redis that served an older release, so `marc cache stats/purge` must see them.
LEGACY_FORMATS = {"": "float32 (legacy)", "f16": "float16 (legacy)"}
TEXT_KIND, ID_KIND = "t", "i"
HEX_DIGITS = frozenset("0123456789abcdef")


def normalise_text(text: str) -> str:
    """NFC + trimmed outer whitespace. The model embeds the normalised text, so equal keys always
    mean equal vectors."""
    return unicodedata.normalize("NFC", text).strip()


@dataclass(frozen=True)
class KeySpace:
    prefix: str
    fingerprint: str
    value_dtype: str = "float32"

    @cached_property
    def namespace(self) -> str:
        return f"{self.prefix}:{self.fingerprint[:FINGERPRINT_CHARS]}:{VALUE_FORMATS[self.value_dtype]}"

    def text_key(self, normalised_text: str) -> str:
        digest = hashlib.sha256(normalised_text.encode("utf-8")).hexdigest()
        return f"{self.namespace}:{TEXT_KIND}:{digest}"

    def text_keys(self, normalised_texts: list[str]) -> list[str]:
        """`text_key` of each text (one call per request, not per item)."""
        start, sha256 = f"{self.namespace}:{TEXT_KIND}:", hashlib.sha256
        return [start + sha256(text.encode("utf-8")).hexdigest() for text in normalised_texts]

    def id_key(self, item_id: str) -> str:
        return f"{self.namespace}:{ID_KIND}:{item_id}"


@dataclass(frozen=True)
class KeyParts:
    fingerprint: str
    """The fingerprint's first FINGERPRINT_CHARS characters (all a key carries)."""
    value_dtype: str
    kind: str
    """TEXT_KIND (a vector by text) or ID_KIND (a vector by item id)."""


def parse_key(prefix: str, key: str) -> KeyParts | None:
    """The parts of a key `KeySpace` made under ``prefix``; None for any other key."""
    if not key.startswith(prefix + ":"):
        return None
    fingerprint, _, rest = key[len(prefix) + 1 :].partition(":")
    if len(fingerprint) != FINGERPRINT_CHARS or not set(fingerprint) <= HEX_DIGITS:
        return None
    tag, _, after_tag = rest.partition(":")
    formats = {tag: dtype for dtype, tag in VALUE_FORMATS.items()} | LEGACY_FORMATS
    if tag in formats and tag:
        value_dtype, rest = formats[tag], after_tag
    else:
        value_dtype = LEGACY_FORMATS[""]
    kind, sep, _ = rest.partition(":")
    return KeyParts(fingerprint, value_dtype, kind) if sep and kind in (TEXT_KIND, ID_KIND) else None
