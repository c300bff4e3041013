"""Streaming writers for precomputed vectors: ``.npy`` (+ ``<stem>.ids.jsonl``, one JSON string per
line, same order) or ``.parquet`` (columns ``id``, ``embedding``). Files appear atomically at close."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Protocol

import numpy as np

SUFFIXES = (".npy", ".parquet")


class VectorWriter(Protocol):
    def write(self, ids: list[str], vectors: np.ndarray) -> None: ...

    def close(self) -> list[Path]:
        """Finish the file(s); returns what was written."""
        ...


def ids_path_for(npy_path: Path) -> Path:
    return npy_path.with_name(f"{npy_path.stem}.ids.jsonl")


class NpyWriter:
    """Rows go to a raw float32 side file while streaming (the row count is unknown until the end),
    then the .npy header is written and the rows copied behind it."""

    def __init__(self, path: Path, dim: int) -> None:
        self.path, self.dim, self.rows = path, dim, 0
        self._raw_path = path.with_name(f".{path.name}.rows.tmp")
        self._ids_tmp = path.with_name(f".{ids_path_for(path).name}.tmp")
        self._raw = self._raw_path.open("wb")
        self._ids = self._ids_tmp.open("w", encoding="utf-8")

    def write(self, ids: list[str], vectors: np.ndarray) -> None:
        self._raw.write(np.ascontiguousarray(vectors, dtype="<f4").tobytes())
        self._ids.writelines(json.dumps(item_id, ensure_ascii=False) + "\n" for item_id in ids)
        self.rows += len(ids)

    def close(self) -> list[Path]:
        self._raw.close()
        self._ids.close()
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with tmp.open("wb") as out, self._raw_path.open("rb") as rows:
            header = {"descr": "<f4", "fortran_order": False, "shape": (self.rows, self.dim)}
            np.lib.format.write_array_header_1_0(out, header)
            shutil.copyfileobj(rows, out, 1 << 20)
        self._raw_path.unlink()
        tmp.replace(self.path)
        self._ids_tmp.replace(ids_path_for(self.path))
        return [self.path, ids_path_for(self.path)]


class ParquetWriter:
    def __init__(self, path: Path, dim: int) -> None:
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise ValueError(f"{path}: writing parquet needs pyarrow (pip install 'pyarrow>=15')") from exc
        self._pa: Any = pa
        self.path, self.dim = path, dim
        self._tmp = path.with_name(f".{path.name}.tmp")
        self._schema = pa.schema([("id", pa.string()), ("embedding", pa.list_(pa.float32(), dim))])
        self._writer = pq.ParquetWriter(self._tmp, self._schema)

    def write(self, ids: list[str], vectors: np.ndarray) -> None:
        pa = self._pa
        flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1))
        embedding = pa.FixedSizeListArray.from_arrays(flat, self.dim)
        self._writer.write_table(
            pa.Table.from_arrays([pa.array(ids, pa.string()), embedding], schema=self._schema)
        )

    def close(self) -> list[Path]:
        self._writer.close()
        self._tmp.replace(self.path)
        return [self.path]


def open_vector_writer(path: Path, dim: int) -> VectorWriter:
    if path.suffix == ".npy":
        return NpyWriter(path, dim)
    if path.suffix == ".parquet":
        return ParquetWriter(path, dim)
    raise ValueError(f"--out {path}: the file name must end in {' or '.join(SUFFIXES)}")
