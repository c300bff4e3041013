"""`marc bench-encodings`: what each wire encoding (`service.api.encodings`) costs and keeps, on a
catalogue embedded by the artifact's served variant.

Per encoding and served size (the full k and each nested prefix): bytes of one vector on the wire
(the `embedding` value - and int8's `scale` - exactly as the service writes them with orjson), the
cosine of the decoded vector to the float32 one (mean and min over the catalogue), and recall@10 of
nearest neighbours: for every item, its 10 nearest other items by cosine on the decoded vectors
(binary: by Hamming distance on the bits, how sign bits are searched) against the same on float32.
"""

from __future__ import annotations

import base64
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import orjson

from artifact.manifest import read_manifest
from loadtest.raw_ort import RawModel
from loadtest.texts import item_texts
from service.api.encodings import VectorEncoding, encode_vector
from service.api.responses import ORJSON_OPTIONS
from service.model.encoder import cpu_variant

ENCODINGS: tuple[VectorEncoding, ...] = ("float", "base64", "float16", "int8", "binary")
NEIGHBOURS = 10


@dataclass(frozen=True)
class EncodingRow:
    encoding: str
    dim: int
    wire_bytes: float
    """Mean bytes of one vector's JSON values: the `embedding` (numbers, or a quoted base64 string)
    plus, for int8, the `scale` number."""
    cosine_mean: float
    cosine_min: float
    recall_at_10: float


def decode(encoding: str, embedding: object, scale: object, dim: int) -> np.ndarray:
    """A body's vector back to float32 (the decoders of docs/api.md)."""
    if encoding == "float":
        return np.asarray(embedding, np.float32)
    raw = base64.b64decode(str(embedding))
    if encoding == "base64":
        return np.frombuffer(raw, "<f4")
    if encoding == "float16":
        return np.frombuffer(raw, "<f2").astype(np.float32)
    if encoding == "int8":
        return np.frombuffer(raw, np.int8).astype(np.float32) * np.float32(scale)  # type: ignore[arg-type]
    bits = np.unpackbits(np.frombuffer(raw, np.uint8), count=dim)
    return np.where(bits == 1, 1.0, -1.0).astype(np.float32)


def nearest(vectors: np.ndarray, k: int = NEIGHBOURS) -> np.ndarray:
    """Indices of each row's k nearest other rows by cosine (for ±1 rows: by Hamming distance, which
    orders the same way)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit = vectors / np.where(norms > 0, norms, 1.0)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    # Ties (frequent with sign bits) broken by index, the same for every encoding.
    return np.argsort(-similarity, axis=1, kind="stable")[:, :k]


def recall(reference: np.ndarray, found: np.ndarray) -> float:
    hits = [len(np.intersect1d(a, b)) for a, b in zip(reference, found, strict=True)]
    return float(np.mean(hits)) / reference.shape[1]


def measure(vectors: np.ndarray, dims: list[int]) -> list[EncodingRow]:
    rows = []
    for dim in dims:
        reference = vectors[:, :dim]
        truth = nearest(reference)
        for encoding in ENCODINGS:
            sizes, decoded = [], []
            for vector in reference:
                embedding, scale = encode_vector(vector, encoding)
                size = len(orjson.dumps(embedding, option=ORJSON_OPTIONS))
                sizes.append(size + (0 if scale is None else len(orjson.dumps(scale, option=ORJSON_OPTIONS))))
                decoded.append(decode(encoding, embedding, scale, dim))
            got = np.stack(decoded)
            cosine = np.sum(got * reference, 1) / (
                np.linalg.norm(got, axis=1) * np.linalg.norm(reference, axis=1)
            )
            rows.append(
                EncodingRow(
                    encoding,
                    dim,
                    float(np.mean(sizes)),
                    float(cosine.mean()),
                    float(cosine.min()),
                    recall(truth, nearest(got)),
                )
            )
    return rows


def run(artifact: Path, items: int, variant: str | None) -> dict[str, object]:
    manifest = read_manifest(artifact)
    chosen = variant or cpu_variant(manifest)
    model = RawModel.open(artifact, chosen)
    vectors = model.embed(item_texts(0, items), batch_size=64)
    rows = measure(vectors, manifest.dimensions)
    return {
        "artifact": str(artifact),
        "model": manifest.name,
        "variant": chosen,
        "items": items,
        "dimensions": manifest.dimensions,
        "rows": [asdict(row) for row in rows],
    }


def markdown(report: dict[str, object], command: str) -> str:
    lines = [
        f"`{command}`: {report['items']} catalogue items (`loadtest.texts`), model {report['model']} "
        f"({report['variant']} variant); each row against the same vectors as float32.",
        "",
        "| encoding | dim | bytes on the wire | cosine to float32: mean | min | recall@10 vs float32 |",
        "|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:  # type: ignore[attr-defined]
        lines.append(
            f"| `{row['encoding']}` | {row['dim']} | {row['wire_bytes']:.0f} | {row['cosine_mean']:.5f} "
            f"| {row['cosine_min']:.5f} | {row['recall_at_10']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def write(report: dict[str, object], out: Path, command: str) -> str:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    table = markdown(report, command)
    out.with_suffix(".md").write_text(table)
    return table
