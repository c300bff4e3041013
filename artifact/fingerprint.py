"""Fingerprints: the identity of the vectors an artifact produces (cache keys are built from it)."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from artifact.manifest import Manifest


def fingerprint_settings(
    *,
    backbone_source: str,
    layer: int,
    pooling: str,
    dim: int,
    max_length: int,
    nested_dims: list[int] | None = None,
) -> dict[str, Any]:
    """The settings that change the output vectors (or what may be asked of them) besides the model
    and tokenizer bytes. ``nested_dims`` counts only when given, so artifacts without nesting keep
    the fingerprints they always had."""
    settings: dict[str, Any] = {
        "backbone": backbone_source,
        "layer": layer,
        "pooling": pooling,
        "dim": dim,
        "max_length": max_length,
    }
    if nested_dims:
        settings["nested_dims"] = list(nested_dims)
    return settings


def compute_fingerprint(model_sha256: str, tokenizer_sha256: str, settings: dict[str, Any]) -> str:
    """sha256 over the fp32 model bytes, the tokenizer bytes and the canonical JSON of ``settings``."""
    canonical = json.dumps(
        {"model": model_sha256, "tokenizer": tokenizer_sha256, "settings": settings},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def manifest_fingerprint(manifest: Manifest) -> str:
    """The fingerprint that ``manifest``'s fp32 model, tokenizer and settings give (what it must record)."""
    settings = fingerprint_settings(
        backbone_source=manifest.backbone.source,
        layer=manifest.backbone.layer,
        pooling=manifest.pooling,
        dim=manifest.dim,
        max_length=manifest.max_length,
        nested_dims=manifest.nested_dims,
    )
    return compute_fingerprint(manifest.variants["fp32"].sha256, manifest.tokenizer.sha256, settings)


def variant_fingerprint(fingerprint: str, variant: str, variant_sha256: str) -> str:
    """fp32 keeps the artifact fingerprint; int8/fp16 vectors differ slightly, so they get their own
    (derived from it), and caches never mix vectors of two precisions."""
    if variant == "fp32":
        return fingerprint
    return hashlib.sha256(f"{fingerprint}:{variant}:{variant_sha256}".encode()).hexdigest()
