"""Cache key spaces and the text normalisation that decides when two texts share a vector.

Text keys: ``<prefix>:<fingerprint[:16]>:<format>:t:<sha256(normalised text)>``
Id keys:   ``<prefix>:<fingerprint[:16]>:<format>:i:<item id>``
``<format>`` names the value layout (`service.cache_values`): ``f32t`` (float32 vector + token trailer)
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

FINGERPRINT_CHARS = 16
VALUE_FORMATS = {"float32": "f32t", "float16": "f16t"}


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
        return f"{self.prefix}:{self.fingerprint[:FINGERPRINT_CHARS]}:{VALUE_FORMATS[self.value_dtype]}"

    def text_key(self, normalised_text: str) -> str:
        digest = hashlib.sha256(normalised_text.encode("utf-8")).hexdigest()
        return f"{self.namespace}:t:{digest}"

    def id_key(self, item_id: str) -> str:
        return f"{self.namespace}:i:{item_id}"
