"""Cache key spaces and the text normalisation that decides when two texts share a vector.

Text keys: ``<prefix>:<fingerprint[:16]>:t:<sha256(normalised text)>``
Id keys:   ``<prefix>:<fingerprint[:16]>:i:<item id>``
With ``MARC_CACHE_DTYPE=float16`` the namespace is ``<prefix>:<fingerprint[:16]>:f16``.

The fingerprint is the served model variant's, so a new model can never read an old model's vectors;
float16 and float32 values live in different key spaces, so they never mix.
"""

from __future__ import annotations

import hashlib
import unicodedata
from dataclasses import dataclass

FINGERPRINT_CHARS = 16
DTYPE_TAGS = {"float16": "f16"}
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

    @property
    def namespace(self) -> str:
        base = f"{self.prefix}:{self.fingerprint[:FINGERPRINT_CHARS]}"
        # float32 keeps the original layout, so existing caches stay valid.
        return base if self.value_dtype == "float32" else f"{base}:{DTYPE_TAGS[self.value_dtype]}"

    def text_key(self, normalised_text: str) -> str:
        digest = hashlib.sha256(normalised_text.encode("utf-8")).hexdigest()
        return f"{self.namespace}:{TEXT_KIND}:{digest}"

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
    value_dtype = "float32"
    for dtype, tag in DTYPE_TAGS.items():
        if rest.startswith(tag + ":"):
            value_dtype, rest = dtype, rest[len(tag) + 1 :]
    kind, sep, _ = rest.partition(":")
    return KeyParts(fingerprint, value_dtype, kind) if sep and kind in (TEXT_KIND, ID_KIND) else None
