"""Texts -> vectors: tokenise (one batch call) -> sort by length -> pad per run -> ONNX Runtime. Each
text's token count and whether it was cut at the model's max_length come along with its vector.

`OnnxEncoder._run` is the only place that calls the model (a plain run, or with IO binding: the output
written straight into the answer's buffer). The execution provider and the variant are decided once,
at load time (`load_encoder`): CUDA only when ONNX Runtime lists it *and* a session really comes up on
it, else CPU; the variant as set, or (auto) fp16 on CUDA and on CPU whichever of int8 and fp32 is
measured faster here (`service.model.variant_choice`).
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnxruntime
from tokenizers import Tokenizer

from artifact.loader import LoadedArtifact, load_artifact
from artifact.manifest import Manifest, read_manifest
from artifact.names import INPUT_NAMES, ArtifactError, Variant
from service.embeddings import Embeddings
from service.model.onnx_session import open_session, ort_session_options
from service.model.variant_choice import (
    INT8_MIN_SPEEDUP,
    VariantChoice,
    choose_cpu_variant,
    has_per_row_int8,
)

log = logging.getLogger(__name__)

# The service tokenises each window in one thread of its own (the micro-batcher's); the tokenizers
# library's own thread pool would split a window of a few dozen texts over the cores, and on the
# service's small batches its hand-offs cost more CPU than the tokenising (an explicit setting wins).
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
ORT_LOG_ERROR, ORT_LOG_FATAL = 3, 4


@dataclass(frozen=True)
class RunStats:
    """One ONNX Runtime run."""

    items: int
    padded_length: int
    seconds: float
    cpu_seconds: float  # of the thread that ran it (ORT's own intra-op threads, if any, not counted)


@dataclass(frozen=True)
class PreparedTexts:
    """Texts tokenised, sorted by length and padded per run: all that is left is the model."""

    tokens: np.ndarray  # int [n], per text in input order
    truncated: np.ndarray  # bool [n]
    runs: list[tuple[np.ndarray, np.ndarray, np.ndarray]]  # (rows, input_ids, attention_mask)


@dataclass(frozen=True)
class EncodedTexts:
    rows: Embeddings  # in input order
    runs: list[RunStats]

    @property
    def vectors(self) -> np.ndarray:
        return self.rows.vectors


class OnnxEncoder:
    def __init__(
        self,
        artifact: LoadedArtifact,
        session: onnxruntime.InferenceSession,
        provider: str,
        variant_choice: VariantChoice | None = None,
    ) -> None:
        self.artifact = artifact
        self.provider = provider
        self.variant_choice = variant_choice or VariantChoice(artifact.variant, "set", "given")
        self._session = session
        # Set from the serving plan once the provider is known (`Settings.serving_plan`): off = plain runs.
        self.io_binding = False
        # Our own copy, padding a batch to its longest text (not to max_length): runs are cut from it.
        self._tokenizer = Tokenizer.from_str(artifact.tokenizer.to_str())
        padding = artifact.tokenizer.padding or {}
        self._tokenizer.enable_padding(
            direction="right",
            pad_id=int(padding.get("pad_id", 0)),
            pad_token=padding.get("pad_token", "[PAD]"),
        )
        self._output = artifact.manifest.output

    @property
    def dim(self) -> int:
        return self.artifact.dim

    @property
    def device(self) -> Literal["cpu", "cuda"]:
        return "cuda" if self.provider == CUDA else "cpu"

    def embed(self, texts: Sequence[str], max_batch_size: int, max_batch_tokens: int = 0) -> EncodedTexts:
        """Vectors for ``texts`` in order, computed in runs of similar length (less padding), each of
        at most ``max_batch_size`` rows and, if given, ``max_batch_tokens`` padded tokens. Blocking:
        call it from a worker thread."""
        return self.run(self.prepare(texts, max_batch_size, max_batch_tokens))

    def prepare(self, texts: Sequence[str], max_batch_size: int, max_batch_tokens: int = 0) -> PreparedTexts:
        """Everything before the model (tokenise, sort by length, pad per run): the micro-batcher
        does this for the next window while the model runs the current one. The batch is tokenised
        and padded to its longest text in one call; each run is then a slice of it, cut to its own
        longest row (right padding: the columns cut are padding in every row of the run)."""
        # encode_batch_fast: no character offsets, which nothing here reads.
        encodings = self._tokenizer.encode_batch_fast(list(texts))
        input_ids = np.array([e.ids for e in encodings], dtype=np.int64)
        attention_mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        tokens = attention_mask.sum(axis=1)
        # The tokenizer truncates at max_length and keeps the rest as overflowing encodings.
        truncated = np.array([bool(e.overflowing) for e in encodings], dtype=bool)
        order = np.argsort(tokens, kind="stable")
        runs = []
        for rows in run_rows(tokens[order], max_batch_size, max_batch_tokens):
            chosen = order[rows]
            longest = int(tokens[chosen[-1]])
            runs.append((chosen, input_ids[chosen, :longest], attention_mask[chosen, :longest]))
        return PreparedTexts(tokens, truncated, runs)

    def run(self, prepared: PreparedTexts) -> EncodedTexts:
        """The model's runs over prepared texts. Blocking: call it from a worker thread."""
        vectors = np.empty((len(prepared.tokens), self.dim), dtype=np.float32)
        stats: list[RunStats] = []
        for rows, input_ids, attention_mask in prepared.runs:
            began, began_cpu = time.perf_counter(), time.thread_time()
            vectors[rows] = self._run(input_ids, attention_mask)
            seconds, cpu_seconds = time.perf_counter() - began, time.thread_time() - began_cpu
            stats.append(RunStats(len(rows), input_ids.shape[1], seconds, cpu_seconds))
        return EncodedTexts(Embeddings(vectors, prepared.tokens, prepared.truncated), stats)

    def run_batch(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """One model run on a padded batch, as the service runs it (the benchmarks time this)."""
        return self._run(input_ids, attention_mask)

    def _run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        if self.io_binding:
            return self._run_bound(input_ids, attention_mask)
        feed = {INPUT_NAMES[0]: input_ids, INPUT_NAMES[1]: attention_mask}
        (embedding,) = self._session.run([self._output], feed)
        return np.asarray(embedding, dtype=np.float32)

    def _run_bound(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """The same run with IO binding: ONNX Runtime copies the inputs from host memory itself and
        writes the output into a buffer of ours (on CUDA: one device-to-host copy into it, no output
        tensor allocated per run). One binding per run: runner threads share the session."""
        binding = self._session.io_binding()
        binding.bind_cpu_input(INPUT_NAMES[0], input_ids)
        binding.bind_cpu_input(INPUT_NAMES[1], attention_mask)
        out = np.empty((input_ids.shape[0], self.dim), dtype=np.float32)
        binding.bind_output(self._output, "cpu", 0, np.float32, list(out.shape), out.ctypes.data)
        self._session.run_with_iobinding(binding)
        return out


def run_rows(lengths: np.ndarray, max_rows: int, max_tokens: int = 0) -> list[slice]:
    """Consecutive runs over ``lengths`` (ascending: each run's last row is its longest), each of at
    most ``max_rows`` rows and, if ``max_tokens``, at most that many padded tokens (rows x its
    longest row); a row longer than ``max_tokens`` alone is a run of its own."""
    runs = []
    start, total = 0, len(lengths)
    while start < total:
        end = min(start + max_rows, total)
        if max_tokens:
            # The longest prefix of [start, end) whose padded size fits: (rows) x (its last length).
            fits = np.flatnonzero((np.arange(1, end - start + 1) * lengths[start:end]) <= max_tokens)
            end = start + max(1, int(fits[-1]) + 1 if len(fits) else 1)
        runs.append(slice(start, end))
        start = end
    return runs


def cuda_provider_options(device_id: int) -> dict[str, Any]:
    return {
        "device_id": device_id,
        # Grow the memory arena by what is asked, not by doubling: shapes vary with every batch.
        "arena_extend_strategy": "kSameAsRequested",
        # Exhaustive cuDNN search would re-run for every new (batch, sequence) shape.
        "cudnn_conv_algo_search": "HEURISTIC",
        "do_copy_in_default_stream": True,
    }


@functools.cache
def _preload_cuda_libraries() -> None:
    """Load the CUDA libraries of NVIDIA's wheels (`pip install .[gpu]` installs them next to
    onnxruntime-gpu) before the CUDA provider needs them: nothing else puts them on the library path
    (the GPU image has them on LD_LIBRARY_PATH too). ORT's own report of what it loaded goes to the
    debug log; a library missing here shows as the CUDA provider failing to load."""
    preload = getattr(onnxruntime, "preload_dlls", None)  # onnxruntime-gpu >= 1.21
    if preload is None:
        return
    with contextlib.redirect_stdout(io.StringIO()) as report:
        try:
            preload()
        except Exception as exc:  # a bad install must not stop a CPU fallback
            log.debug("onnxruntime.preload_dlls failed: %s", exc)
    if report.getvalue().strip():
        log.debug("onnxruntime.preload_dlls: %s", report.getvalue().strip())


def _try_cuda(
    artifact: LoadedArtifact, options: onnxruntime.SessionOptions, device_id: int
) -> onnxruntime.InferenceSession | None:
    """A session on CUDA, or None when the CUDA provider does not really load (missing libraries,
    no device). ORT's own error log about it is silenced: the caller logs one line."""
    _preload_cuda_libraries()
    onnxruntime.set_default_logger_severity(ORT_LOG_FATAL)
    try:
        session = open_session(
            artifact, providers=[(CUDA, cuda_provider_options(device_id)), CPU], options=options
        )
    except ArtifactError as exc:
        log.debug("CUDA session failed: %s", exc)
        return None
    finally:
        onnxruntime.set_default_logger_severity(ORT_LOG_ERROR)
    return session if session.get_providers()[0] == CUDA else None


def cpu_variant(manifest: Manifest) -> Variant:
    """The variant this artifact offers for CPUs: int8 when it has one with per-row activation scales
    (`service.model.variant_choice.has_per_row_int8`), else fp32. ``MARC_VARIANT=auto`` serves it
    where int8 is measured faster (`service.model.variant_choice`); the load tools pin it."""
    return "int8" if has_per_row_int8(manifest) else "fp32"


def load_encoder(
    directory: Path,
    *,
    variant: str = "auto",
    provider: str = "auto",
    cuda_device_id: int = 0,
    intra_threads: int = 0,
    inter_threads: int = 0,
    int8_min_speedup: float = INT8_MIN_SPEEDUP,
) -> OnnxEncoder:
    """Verify the artifact, pick provider and variant once, and build the encoder.

    variant "auto" serves fp16 on CUDA (fp32 when the artifact has none); on CPU int8 or fp32,
    whichever runs faster here (measured: `service.model.variant_choice`; int8 only from
    ``int8_min_speedup``). provider "cuda" fails loudly when CUDA cannot be used; "auto" falls back
    to CPU.
    """
    manifest = read_manifest(directory)
    options = ort_session_options(intra_threads, inter_threads)
    cuda_listed = CUDA in onnxruntime.get_available_providers()
    if provider == "cuda" and not cuda_listed:
        raise ArtifactError(
            f"MARC_PROVIDER=cuda but this onnxruntime build has no {CUDA} "
            f"(available: {onnxruntime.get_available_providers()}); install onnxruntime-gpu"
        )

    why_cpu = "MARC_PROVIDER=cpu" if provider == "cpu" else "CUDA not available"
    if cuda_listed and provider != "cpu":
        if variant != "auto":
            choice = VariantChoice(variant, "set", f"MARC_VARIANT={variant}")  # type: ignore[arg-type]
        elif "fp16" in manifest.variants:
            choice = VariantChoice("fp16", "provider", "auto on CUDA: the fp16 variant")
        else:
            choice = VariantChoice("fp32", "provider", "auto on CUDA: the artifact has no fp16 variant")
        artifact = load_artifact(directory, choice.variant)
        session = _try_cuda(artifact, options, cuda_device_id)
        if session is not None:
            log.info(
                "execution provider: %s (device %d), variant %s (%s), model %s",
                CUDA,
                cuda_device_id,
                choice.variant,
                choice.why,
                artifact.name,
            )
            return OnnxEncoder(artifact, session, CUDA, choice)
        if provider == "cuda":
            raise ArtifactError(f"MARC_PROVIDER=cuda but {CUDA} failed to load on device {cuda_device_id}")
        why_cpu = f"{CUDA} listed but failed to load"

    cpu_session: onnxruntime.InferenceSession | None = None
    if variant == "auto":
        choice, cpu_session = choose_cpu_variant(directory, manifest, options, min_speedup=int8_min_speedup)
    else:
        choice = VariantChoice(variant, "set", f"MARC_VARIANT={variant}")  # type: ignore[arg-type]
    artifact = load_artifact(directory, choice.variant)
    session = cpu_session or open_session(artifact, providers=[CPU], options=options)
    if choice.variant == "fp16":
        log.warning("serving the fp16 variant on CPU is slow; fp32 or int8 suit CPUs better")
    if choice.variant == "int8" and not has_per_row_int8(manifest):
        log.warning(
            "this artifact's int8 variant scales activations per batch: a text's vector depends on "
            "the texts it is batched with; re-export it (marc export --int8) or serve fp32"
        )
    log.info(
        "execution provider: %s (%s), variant %s (%s), model %s",
        CPU,
        why_cpu,
        choice.variant,
        choice.why,
        artifact.name,
    )
    return OnnxEncoder(artifact, session, CPU, choice)
