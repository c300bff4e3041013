"""Write the artifact's ``tokenizer.json``: the fast tokenizer's backend with padding and truncation
set, so the `tokenizers` library alone gives the ids the Hugging Face tokenizer gives with
``padding=True, truncation=True, max_length=max_length``."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast


def serving_tokenizer(tokenizer: PreTrainedTokenizerFast, max_length: int) -> Tokenizer:
    if tokenizer.pad_token is None or tokenizer.pad_token_id is None:
        raise ValueError("the checkpoint's tokenizer has no pad token; cannot configure padding")
    # A copy: the HF tokenizer mutates its backend's padding/truncation on every call.
    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.no_padding()
    backend.no_truncation()
    backend.enable_truncation(max_length=max_length)
    # Right padding to the longest text of each batch, as training did (real tokens keep their positions).
    backend.enable_padding(direction="right", pad_id=tokenizer.pad_token_id, pad_token=tokenizer.pad_token)
    return backend


def write_tokenizer(tokenizer: PreTrainedTokenizerFast, max_length: int, path: Path) -> None:
    serving_tokenizer(tokenizer, max_length).save(str(path), pretty=False)
