"""Cache key spaces and the text normalisation that decides when two texts share a vector.

Text keys: ``<prefix>:<fingerprint[:16]>:t:<sha256(normalised text)>``
Id keys:   ``<prefix>:<fingerprint[:16]>:i:<item id>``

The fingerprint is the served model variant's, so a new model can never read an old model's vectors.
"""

from __future__ import annotations

import hashlib
import unicodedata
from dataclasses import dataclass

FINGERPRINT_CHARS = 16


def normalise_text(text: str) -> str:
    """NFC + trimmed outer whitespace. The model embeds the normalised text, so equal keys always
    mean equal vectors."""
    return unicodedata.normalize("NFC", text).strip()


@dataclass(frozen=True)
class KeySpace:
    prefix: str
    fingerprint: str

    @property
    def namespace(self) -> str:
        return f"{self.prefix}:{self.fingerprint[:FINGERPRINT_CHARS]}"

    def text_key(self, normalised_text: str) -> str:
        digest = hashlib.sha256(normalised_text.encode("utf-8")).hexdigest()
        return f"{self.namespace}:t:{digest}"

    def id_key(self, item_id: str) -> str:
        return f"{self.namespace}:i:{item_id}"
