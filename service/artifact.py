"""The artifact contract between export/ and service/ (DESIGN.md §3), and its torch-free loader.

An artifact is a directory:
  model.onnx (+ model.int8.onnx, model.fp16.onnx)  inputs input_ids/attention_mask, output embedding
  tokenizer.json                                   loadable by `tokenizers` alone, padding/truncation set
  manifest.json                                    this module's `Manifest`

Nothing here imports torch or transformers. The service calls, once at start-up::

    artifact = load_artifact(directory, variant)      # sha256 + fingerprint + tokenizer checks
    session = open_session(artifact, providers=...)   # or build it yourself, then:
    check_session_io(session, artifact)               # graph inputs/outputs match the manifest
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from tokenizers import Tokenizer

if TYPE_CHECKING:  # onnxruntime is imported lazily: `marc --help` must not pay for it
    import onnxruntime

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
TOKENIZER_FILE = "tokenizer.json"
INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAME = "embedding"
Variant = Literal["fp32", "int8", "fp16"]


class ArtifactError(RuntimeError):
    """The artifact cannot be used; the message names the file and what is wrong."""


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


# ---------------------------------------------------------------------------------------------
# Fingerprints: the identity of the vectors an artifact produces (cache keys are built from it).


def fingerprint_settings(
    *, backbone_source: str, layer: int, pooling: str, dim: int, max_length: int
) -> dict[str, Any]:
    """The settings that change the output vectors besides the model and tokenizer bytes."""
    return {
        "backbone": backbone_source,
        "layer": layer,
        "pooling": pooling,
        "dim": dim,
        "max_length": max_length,
    }


def compute_fingerprint(model_sha256: str, tokenizer_sha256: str, settings: dict[str, Any]) -> str:
    """sha256 over the fp32 model bytes, the tokenizer bytes and the canonical JSON of ``settings``."""
    canonical = json.dumps(
        {"model": model_sha256, "tokenizer": tokenizer_sha256, "settings": settings},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def variant_fingerprint(fingerprint: str, variant: str, variant_sha256: str) -> str:
    """fp32 keeps the artifact fingerprint; int8/fp16 vectors differ slightly, so they get their own
    (derived from it), and caches never mix vectors of two precisions."""
    if variant == "fp32":
        return fingerprint
    return hashlib.sha256(f"{fingerprint}:{variant}:{variant_sha256}".encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Loader


@dataclass(frozen=True)
class LoadedArtifact:
    """A verified artifact: every file used matched its sha256, the fingerprint matched."""

    directory: Path
    manifest: Manifest
    variant: Variant
    model_path: Path
    tokenizer: Tokenizer
    """Padding (right, to the longest text in a batch) and truncation to ``max_length`` are set."""
    fingerprint: str
    """Fingerprint of this variant's vectors (equals ``manifest.fingerprint`` for fp32)."""

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def dim(self) -> int:
        return self.manifest.dim

    @property
    def max_length(self) -> int:
        return self.manifest.max_length

    def tokenize(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """One batch call; returns the ONNX feed (int64 ``input_ids`` and ``attention_mask``)."""
        encodings = self.tokenizer.encode_batch(list(texts))
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        return {INPUT_NAMES[0]: ids, INPUT_NAMES[1]: mask}


def _verified_file(directory: Path, entry: FileEntry, what: str) -> Path:
    """Path of ``entry`` inside ``directory`` after checking it exists, has the recorded size and sha256."""
    path = directory / entry.file
    if Path(entry.file).name != entry.file:
        raise ArtifactError(
            f"{directory / MANIFEST_FILE}: {what} file {entry.file!r} must be a plain file name"
        )
    if not path.is_file():
        raise ArtifactError(f"{path}: {what} file is missing")
    size = path.stat().st_size
    if size != entry.bytes:
        raise ArtifactError(
            f"{path}: {what} file has {size} bytes but the manifest records {entry.bytes} "
            "(truncated or replaced?)"
        )
    digest = sha256_file(path)
    if digest != entry.sha256:
        raise ArtifactError(
            f"{path}: {what} file sha256 {digest} does not match the manifest ({entry.sha256}); "
            "the file was modified after export"
        )
    return path


def _load_tokenizer(path: Path, max_length: int) -> Tokenizer:
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception on malformed files
        raise ArtifactError(f"{path}: not a valid tokenizers JSON file ({exc})") from exc
    padding, truncation = tokenizer.padding, tokenizer.truncation
    if not padding or padding.get("direction") != "right":
        raise ArtifactError(f"{path}: right padding must be configured (found {padding!r})")
    if not truncation or truncation.get("max_length") != max_length:
        raise ArtifactError(
            f"{path}: truncation must be configured with max_length {max_length} as in the manifest "
            f"(found {truncation!r})"
        )
    return tokenizer


def load_artifact(directory: Path | str, variant: str = "fp32") -> LoadedArtifact:
    """Read and verify an artifact directory; raise `ArtifactError` naming the file on any problem.

    Verifies the manifest (format version, schema), the sha256 and size of the tokenizer and of the
    requested variant's model file, and that the fingerprints recorded in the manifest are the ones
    its files and settings give. The graph's inputs/outputs are checked by `check_session_io` once a
    session exists (so the service builds its session only once).
    """
    directory = Path(directory)
    manifest_path = directory / MANIFEST_FILE
    manifest = read_manifest(directory)
    if variant not in get_args(Variant):
        raise ArtifactError(f"variant {variant!r} is not one of {', '.join(get_args(Variant))}")
    if variant not in manifest.variants:
        raise ArtifactError(
            f"{manifest_path}: variant {variant!r} is not in this artifact "
            f"(available: {', '.join(manifest.variants)}; export it with `marc export --{variant}`)"
        )
    if "fp32" not in manifest.variants:
        raise ArtifactError(f"{manifest_path}: the fp32 variant entry is missing")
    tokenizer_path = _verified_file(directory, manifest.tokenizer, "tokenizer")
    entry = manifest.variants[variant]  # type: ignore[index]
    model_path = _verified_file(directory, entry, f"{variant} model")

    settings = fingerprint_settings(
        backbone_source=manifest.backbone.source,
        layer=manifest.backbone.layer,
        pooling=manifest.pooling,
        dim=manifest.dim,
        max_length=manifest.max_length,
    )
    expected = compute_fingerprint(manifest.variants["fp32"].sha256, manifest.tokenizer.sha256, settings)
    if manifest.fingerprint != expected:
        raise ArtifactError(
            f"{manifest_path}: fingerprint {manifest.fingerprint} does not match the files and settings "
            f"the manifest describes (expected {expected}); the manifest was edited"
        )
    for name, each in manifest.variants.items():
        if each.fingerprint != variant_fingerprint(expected, name, each.sha256):
            raise ArtifactError(f"{manifest_path}: fingerprint of variant {name!r} does not match its file")

    return LoadedArtifact(
        directory=directory,
        manifest=manifest,
        variant=variant,  # type: ignore[arg-type]
        model_path=model_path,
        tokenizer=_load_tokenizer(tokenizer_path, manifest.max_length),
        fingerprint=entry.fingerprint,
    )


# ---------------------------------------------------------------------------------------------
# ONNX Runtime session

_ONNX_INT64 = "tensor(int64)"
_ONNX_FLOAT = "tensor(float)"


def check_session_io(session: onnxruntime.InferenceSession, artifact: LoadedArtifact) -> None:
    """Refuse a graph whose inputs/outputs differ from the manifest (names, dtypes, rank, k)."""
    manifest, path = artifact.manifest, artifact.model_path
    inputs = {i.name: i for i in session.get_inputs()}
    if sorted(inputs) != sorted(manifest.inputs):
        raise ArtifactError(
            f"{path}: graph inputs {sorted(inputs)} do not match the manifest's {sorted(manifest.inputs)}"
        )
    for name, arg in inputs.items():
        if arg.type != _ONNX_INT64 or len(arg.shape) != 2:
            raise ArtifactError(
                f"{path}: input {name!r} is {arg.type} of rank {len(arg.shape)}; expected "
                f"{_ONNX_INT64} [batch, sequence]"
            )
    outputs = session.get_outputs()
    if [o.name for o in outputs] != [manifest.output]:
        raise ArtifactError(
            f"{path}: graph outputs {[o.name for o in outputs]} do not match the manifest's "
            f"[{manifest.output!r}]"
        )
    out = outputs[0]
    if out.type != _ONNX_FLOAT or len(out.shape) != 2:
        raise ArtifactError(
            f"{path}: output {out.name!r} is {out.type} of rank {len(out.shape)}; expected "
            f"{_ONNX_FLOAT} [batch, {manifest.dim}]"
        )
    if isinstance(out.shape[1], int) and out.shape[1] != manifest.dim:
        raise ArtifactError(f"{path}: output width {out.shape[1]} but the manifest says dim {manifest.dim}")


def ort_session_options(intra_threads: int = 0, inter_threads: int = 0) -> onnxruntime.SessionOptions:
    """Session options for serving: full graph optimisation, sequential execution; 0 threads = ORT's
    default (one per physical core)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = intra_threads
    options.inter_op_num_threads = inter_threads
    options.log_severity_level = 3  # errors only: no warning spam at start-up
    # Idle ORT threads would otherwise spin between runs and take the core the event loop needs.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def open_session(
    artifact: LoadedArtifact,
    *,
    providers: Sequence[str | tuple[str, dict[str, Any]]] = ("CPUExecutionProvider",),
    options: onnxruntime.SessionOptions | None = None,
) -> onnxruntime.InferenceSession:
    """Create the ONNX Runtime session for ``artifact`` and check its inputs/outputs."""
    import onnxruntime

    try:
        session = onnxruntime.InferenceSession(
            str(artifact.model_path), sess_options=options or ort_session_options(), providers=list(providers)
        )
    except Exception as exc:  # ORT raises its own exception types (Fail, InvalidGraph, ...)
        raise ArtifactError(f"{artifact.model_path}: ONNX Runtime cannot load the model ({exc})") from exc
    check_session_io(session, artifact)
    return session
