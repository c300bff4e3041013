"""The verified, torch-free artifact loader. The service calls, once at start-up::

    artifact = load_artifact(directory, variant)   # sha256 + fingerprint + tokenizer checks

and then builds its ONNX Runtime session from the loaded artifact's ``model_path``
(`service.model.onnx_session`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

import numpy as np
from tokenizers import Tokenizer

from artifact.fingerprint import manifest_fingerprint, variant_fingerprint
from artifact.manifest import FileEntry, Manifest, read_manifest, sha256_file
from artifact.names import INPUT_NAMES, MANIFEST_FILE, ArtifactError, Variant


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
    def dimensions(self) -> list[int]:
        """Sizes a request may ask for (`Manifest.dimensions`)."""
        return self.manifest.dimensions

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

    expected = manifest_fingerprint(manifest)
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
