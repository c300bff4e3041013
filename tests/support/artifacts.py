"""Forged artifacts: a manifest re-recorded to match edited files, as a careful forger would, so only
the checks that look past sizes, sha256 and fingerprints can tell."""

from __future__ import annotations

import json
from pathlib import Path

import onnx

from artifact.fingerprint import compute_fingerprint, fingerprint_settings, variant_fingerprint
from artifact.manifest import sha256_file
from artifact.names import MANIFEST_FILE


def rehash(directory: Path) -> None:
    """Re-record every file's size/sha256 and the fingerprints in ``directory``'s manifest."""
    path = directory / MANIFEST_FILE
    raw = json.loads(path.read_text())
    for entry in [raw["tokenizer"], *raw["variants"].values()]:
        file = directory / entry["file"]
        entry.update(sha256=sha256_file(file), bytes=file.stat().st_size)
    settings = fingerprint_settings(
        backbone_source=raw["backbone"]["source"],
        layer=raw["backbone"]["layer"],
        pooling=raw["pooling"],
        dim=raw["dim"],
        max_length=raw["max_length"],
    )
    raw["fingerprint"] = compute_fingerprint(
        raw["variants"]["fp32"]["sha256"], raw["tokenizer"]["sha256"], settings
    )
    for name, entry in raw["variants"].items():
        entry["fingerprint"] = variant_fingerprint(raw["fingerprint"], name, entry["sha256"])
    path.write_text(json.dumps(raw))


def rename_graph_input(directory: Path, file: str = "model.onnx") -> None:
    """``file``'s ``input_ids`` renamed to ``ids``, the manifest re-recorded to match."""
    model = onnx.load(str(directory / file))
    for graph_input in model.graph.input:
        if graph_input.name == "input_ids":
            graph_input.name = "ids"
    for node in model.graph.node:
        node.input[:] = ["ids" if name == "input_ids" else name for name in node.input]
    onnx.save(model, str(directory / file))
    rehash(directory)
