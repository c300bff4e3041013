"""Damaged and forged artifacts. The damage helpers break one thing a verified loader must notice; the
forgeries re-record the manifest to match edited files, as a careful forger would, so only the checks that
look past sizes, sha256 and fingerprints can tell."""

from __future__ import annotations

import json
from pathlib import Path

import onnx

from artifact.fingerprint import manifest_fingerprint, variant_fingerprint
from artifact.manifest import read_manifest, sha256_file
from artifact.names import MANIFEST_FILE

# --- damage: each leaves the manifest as it was ------------------------------------------------------


def flip_model_byte(directory: Path) -> None:
    """One bit of model.onnx's middle byte flipped (same size: only the sha256 can tell)."""
    path = directory / "model.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def truncate_model(directory: Path) -> None:
    """model.onnx cut to a third of its bytes."""
    path = directory / "model.onnx"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def edit_tokenizer(directory: Path) -> None:
    """One character of tokenizer.json changed (same size: only the sha256 can tell)."""
    path = directory / "tokenizer.json"
    path.write_text(path.read_text().replace('"<pad>"', '"<pab>"', 1))


def wrong_fingerprint(directory: Path) -> None:
    """The manifest's fingerprint replaced by one its files do not give."""
    path = directory / MANIFEST_FILE
    raw = json.loads(path.read_text())
    raw["fingerprint"] = "0" * 64
    path.write_text(json.dumps(raw))


# --- forgeries: the manifest re-recorded to match -----------------------------------------------------


def rehash(directory: Path) -> None:
    """Re-record every file's size/sha256 and the fingerprints in ``directory``'s manifest."""
    path = directory / MANIFEST_FILE
    raw = json.loads(path.read_text())
    for entry in [raw["tokenizer"], *raw["variants"].values()]:
        file = directory / entry["file"]
        entry.update(sha256=sha256_file(file), bytes=file.stat().st_size)
    path.write_text(json.dumps(raw))
    raw["fingerprint"] = manifest_fingerprint(read_manifest(directory))
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
