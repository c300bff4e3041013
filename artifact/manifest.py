"""``manifest.json``: the schema every artifact describes itself with, and its reader."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from artifact.names import FORMAT_VERSION, INPUT_NAMES, MANIFEST_FILE, OUTPUT_NAME, ArtifactError, Variant


class BackboneInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str = Field(description="Where the backbone came from: 'smollm2', 'tiny:<seed>' or a folder.")
    architecture: str = Field(description="Model class, e.g. LlamaModel.")
    total_layers: int = Field(gt=0, description="Depth of the full backbone (N).")
    layer: int = Field(gt=0, description="Cut layer L: the artifact holds the first L blocks.")
    hidden_size: int = Field(gt=0, description="Backbone hidden size d.")


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    file: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(ge=0)


class VariantEntry(FileEntry):
    fingerprint: str = Field(
        pattern=r"^[0-9a-f]{64}$",
        description="Identity of the vectors this variant produces (cache keys use it).",
    )


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format_version: int
    name: str
    fingerprint: str = Field(pattern=r"^[0-9a-f]{64}$", description="Fingerprint of the fp32 model.")
    created_at: datetime
    backbone: BackboneInfo
    pooling: Literal["mean", "last"]
    dim: int = Field(gt=0, description="k, the size of the served vector.")
    nested_dims: list[int] = Field(
        default_factory=list,
        description="Prefix sizes d the compressor was trained for (`marc train --nested-dims`): z[:d] "
        "is a vector on its own; ascending, the last is dim. Empty = only the full k.",
    )
    max_length: int = Field(gt=0, description="Tokens per item; longer texts are truncated.")
    inputs: list[str] = Field(default_factory=lambda: list(INPUT_NAMES))
    output: str = OUTPUT_NAME
    tokenizer: FileEntry
    variants: dict[Variant, VariantEntry]
    parity: dict[str, Any] = Field(default_factory=dict, description="Export-time ONNX vs PyTorch check.")
    metrics: dict[str, Any] = Field(default_factory=dict, description="Training and evaluation metrics.")
    config: dict[str, Any] = Field(default_factory=dict, description="The training config, verbatim.")
    export: dict[str, Any] = Field(
        default_factory=dict, description="How the artifact was made: opset, tool versions, quantisation."
    )

    @model_validator(mode="after")
    def _nested_dims_end_at_dim(self) -> Manifest:
        dims = self.nested_dims
        if dims and (dims != sorted(set(dims)) or dims[0] < 1 or dims[-1] != self.dim):
            raise ValueError(
                f"nested_dims {dims} must be ascending, distinct, >= 1 and end at dim {self.dim}"
            )
        return self

    @property
    def dimensions(self) -> list[int]:
        """The vector sizes this artifact serves: its nested prefixes, or only k."""
        return list(self.nested_dims) or [self.dim]


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(directory: Path) -> Manifest:
    """Parse and validate ``manifest.json`` (format version first, so old readers fail clearly)."""
    path = Path(directory) / MANIFEST_FILE
    if not path.is_file():
        raise ArtifactError(f"{path}: not found (is {directory} an artifact made by `marc export`?)")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path}: not valid JSON ({exc})") from exc
    version = raw.get("format_version") if isinstance(raw, dict) else None
    if version != FORMAT_VERSION:
        raise ArtifactError(
            f"{path}: format_version {version!r} is not supported (this build reads {FORMAT_VERSION})"
        )
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        raise ArtifactError(f"{path}: invalid manifest: {exc}") from exc
