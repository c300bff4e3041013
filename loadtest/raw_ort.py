"""ONNX Runtime on an artifact, offline, with nothing around it: the cold path's limit, and the
truncation and precision comparisons. Each measured batch includes tokenisation and padding to its
longest text (what the service does per run), with the service's session options."""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime

from artifact.loader import LoadedArtifact, load_artifact
from service.model.onnx_session import open_session, ort_session_options
from service.settings import available_cpus


@dataclass(frozen=True)
class Throughput:
    batch_size: int
    items: int
    seconds: float
    cpu_seconds: float  # this process's CPU time (all ORT threads) over the same runs

    @property
    def items_per_second(self) -> float:
        return self.items / self.seconds

    @property
    def items_per_cpu_second(self) -> float:
        """Less sensitive than wall time to other processes on a shared machine."""
        return self.items / self.cpu_seconds


@dataclass(frozen=True)
class RawModel:
    artifact: LoadedArtifact
    session: onnxruntime.InferenceSession
    model_path: Path

    @classmethod
    def open(cls, directory: Path, variant: str = "fp32", intra_threads: int = 0) -> RawModel:
        """The artifact's ``variant`` with the service's session options (``intra_threads`` 0 = ORT's
        default, one per physical core)."""
        artifact = load_artifact(directory, variant)
        session = open_session(artifact, options=ort_session_options(intra_threads))
        return cls(artifact, session, artifact.model_path)

    @classmethod
    def from_file(cls, directory: Path, model_path: Path) -> RawModel:
        """A model file outside the artifact (e.g. a variant the benchmark made) with the artifact's
        tokenizer and the service's session options."""
        artifact = load_artifact(directory, "fp32")
        session = onnxruntime.InferenceSession(
            str(model_path), sess_options=ort_session_options(), providers=["CPUExecutionProvider"]
        )
        return cls(artifact, session, model_path)

    @property
    def model_bytes(self) -> int:
        return self.model_path.stat().st_size

    def run(self, texts: Sequence[str]) -> np.ndarray:
        (vectors,) = self.session.run([self.artifact.manifest.output], self.artifact.tokenize(texts))
        return vectors

    def embed(self, texts: Sequence[str], batch_size: int) -> np.ndarray:
        return np.concatenate([self.run(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)])

    def throughput(self, texts: Sequence[str], batch_size: int, max_seconds: float) -> Throughput:
        """Items/s over consecutive batches of ``texts`` (cycled) after one warm-up batch, for
        ``max_seconds`` (and at least two batches)."""
        self.run(texts[:batch_size])
        items, batches = 0, 0
        began, cpu_began = time.perf_counter(), time.process_time()
        while True:
            start = (batches * batch_size) % max(len(texts) - batch_size + 1, 1)
            self.run(texts[start : start + batch_size])
            items += len(texts[start : start + batch_size])
            batches += 1
            elapsed = time.perf_counter() - began
            if batches >= 2 and elapsed >= max_seconds:
                return Throughput(batch_size, items, elapsed, time.process_time() - cpu_began)

    def side_by_side(
        self, texts: Sequence[str], batch_size: int, max_seconds: float, runs: int = 2
    ) -> Throughput:
        """`throughput` with ``runs`` threads calling the session at once, each on its own slice of
        ``texts`` (open the model with ``intra_threads`` = CPUs / runs, as the service's
        ``MARC_MODEL_RUNNERS`` does)."""
        cpu_began = time.process_time()
        with ThreadPoolExecutor(runs) as pool:
            parts = list(
                pool.map(
                    lambda part: self.throughput(texts[part::runs], batch_size, max_seconds), range(runs)
                )
            )
        seconds = max(part.seconds for part in parts)
        return Throughput(
            batch_size, sum(part.items for part in parts), seconds, time.process_time() - cpu_began
        )


@dataclass(frozen=True)
class ColdLimit:
    """Raw ORT both ways the service can run the model: one run at a time over ORT's default threads
    (MARC_MODEL_RUNNERS=1), and two runs side by side on half the CPUs each (the default 2 runners)."""

    one: RawModel
    pair: RawModel

    @classmethod
    def open(cls, directory: Path, variant: str) -> ColdLimit:
        halves = max(1, available_cpus() // 2)
        return cls(RawModel.open(directory, variant), RawModel.open(directory, variant, halves))

    def measure(
        self, texts: Sequence[str], batch_size: int, max_seconds: float
    ) -> tuple[Throughput, Throughput]:
        """(one run, two runs side by side) at ``batch_size``."""
        one = self.one.throughput(texts, batch_size, max_seconds)
        return one, self.pair.side_by_side(texts, batch_size, max_seconds)


def best_throughput(
    model: RawModel, texts: Sequence[str], batch_sizes: Sequence[int], max_seconds: float
) -> tuple[Throughput, list[Throughput]]:
    """The best batch size's throughput, and every batch size's."""
    sweep = [model.throughput(texts, size, max_seconds) for size in batch_sizes]
    return max(sweep, key=lambda t: t.items_per_second), sweep


def cosine_similarities(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
