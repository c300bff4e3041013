"""Which variant of an artifact a model is served with, and why (`VariantChoice`: logged at load and
shown in /v1/models).

On CPU, ``MARC_VARIANT=auto`` serves int8 or fp32 by what is faster on the machine it runs on: int8's
worth depends on the CPU (its int8 dot-product instructions: AVX2 only, AVX-512 VNNI, AMX) and on the
model's shape (a tiny model gains nothing), so it is measured, not guessed. At load both sessions run
the same batch in alternation for about a second (`measure_cpu_variant`), and int8 is served only when
it is at least ``MARC_INT8_MIN_SPEEDUP`` (`INT8_MIN_SPEEDUP`) times as fast as fp32 - it costs a little
precision (a catalogue cosine of ~0.997 to fp32), worth paying only for real speed; 0 serves int8
wherever the artifact has it, without measuring (the tests' setting: the same variant every run). An
int8 variant without per-row activation scales is never a candidate (a text's vector would depend on
its batch-mates).

A process measures an artifact once: the choice is kept by the variant files' sha256 and the thread
settings (`remembered`), so a reload of the same files, several models on the same files and every
worker of `marc serve --workers N` (the parent hands its choices to them: `remember`) serve the same
variant, under the same fingerprint. Other processes measure for themselves: pin ``MARC_VARIANT`` (or
``MARC_INT8_MIN_SPEEDUP=0``) where several processes must agree (replicas sharing a cache,
`marc precompute` feeding a service), or decide once on the hardware that serves.
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnxruntime

from artifact.loader import LoadedArtifact, load_artifact
from artifact.manifest import Manifest
from artifact.names import INPUT_NAMES, Variant
from service.model.onnx_session import open_session

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
# int8 must buy at least this much speed over fp32 to be served (it costs ~0.3% of cosine to fp32).
INT8_MIN_SPEEDUP = 1.10
# The probe batch: rows of a catalogue text's length (~24 tokens; BENCHMARKS.md's texts average 26).
PROBE_ROWS = 8
PROBE_TOKENS = 24
PROBE_TEXT = "Nordik premium formal cotton shoes in red with leather laces, vegan, for the office and travel"
PROBE_SECONDS = 1.0  # alternating runs for about this long ...
MIN_ROUNDS, MAX_ROUNDS = 5, 1000  # ... but at least / at most this many of each

Rule = Literal["set", "provider", "no-int8", "preferred", "measured"]


@dataclass(frozen=True)
class VariantChoice:
    """The variant served and why: ``rule`` says how it was decided, ``why`` in words (the log line
    and /v1/models); a measured choice carries the median run times it was made on."""

    variant: Variant
    rule: Rule
    why: str
    fp32_ms: float | None = None  # median run times of the probe batch
    int8_ms: float | None = None
    int8_speedup: float | None = None  # median over rounds of fp32 / int8 time
    rounds: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def has_per_row_int8(manifest: Manifest) -> bool:
    """The artifact carries an int8 variant whose activations are scaled per row (a text gets the same
    vector in any batch); older int8 variants scaled per batch and are never served by auto."""
    int8 = manifest.export.get("int8") or {}
    return "int8" in manifest.variants and int8.get("activations") == "per-row"


def probe_feed(
    artifact: LoadedArtifact, rows: int = PROBE_ROWS, tokens: int = PROBE_TOKENS
) -> dict[str, Any]:
    """``rows`` copies of a catalogue-like text, ``tokens`` long (at most the model's max_length)."""
    tokens = min(tokens, artifact.max_length)
    encoding = artifact.tokenizer.encode(PROBE_TEXT)
    text_ids = [token for token, real in zip(encoding.ids, encoding.attention_mask, strict=True) if real]
    ids = np.resize(np.array(text_ids, dtype=np.int64), tokens)
    input_ids = np.tile(ids, (rows, 1))
    return {INPUT_NAMES[0]: input_ids, INPUT_NAMES[1]: np.ones_like(input_ids)}


def measure_cpu_variant(
    sessions: dict[Variant, onnxruntime.InferenceSession],
    feed: dict[str, Any],
    *,
    min_speedup: float = INT8_MIN_SPEEDUP,
    seconds: float = PROBE_SECONDS,
) -> VariantChoice:
    """Run ``feed`` on the fp32 and int8 sessions in rounds of one run each (every other round in the
    other order, so neither always runs on a warmer cache) for about ``seconds``. int8's speedup is
    the median over rounds of fp32's time / int8's: the two runs of a round share the machine's load
    of that moment, so a busy neighbour slows both and leaves their ratio. int8 when it is at least
    ``min_speedup``."""
    times: dict[Variant, list[float]] = {"fp32": [], "int8": []}
    for session in sessions.values():
        session.run(None, feed)  # warm-up: first-run allocations are not the model's speed
    deadline = time.perf_counter() + seconds
    rounds = 0
    while rounds < MAX_ROUNDS and (rounds < MIN_ROUNDS or time.perf_counter() < deadline):
        order: list[Variant] = ["fp32", "int8"] if rounds % 2 == 0 else ["int8", "fp32"]
        for variant in order:
            began = time.perf_counter()
            sessions[variant].run(None, feed)
            times[variant].append(time.perf_counter() - began)
        rounds += 1
    median_speedup = statistics.median(f / i for f, i in zip(times["fp32"], times["int8"], strict=True))
    chosen: Variant = "int8" if median_speedup >= min_speedup else "fp32"
    # The message is written from the figures /v1/models shows (rounded once), so the two always agree.
    speedup = round(median_speedup, 3)
    fp32_ms, int8_ms = (round(statistics.median(times[v]) * 1000, 3) for v in ("fp32", "int8"))
    rows, tokens = feed[INPUT_NAMES[0]].shape
    why = (
        f"measured at load: int8 runs {speedup:.2f}x as fast as fp32 on this CPU (median of {rounds} "
        f"paired runs of {rows} rows x {tokens} tokens; fp32 {fp32_ms:.2f} ms, int8 {int8_ms:.2f} ms); "
        f"int8 is served from {min_speedup:.2f}x"
    )
    return VariantChoice(chosen, "measured", why, fp32_ms, int8_ms, speedup, rounds)


# --- one measurement per process and artifact ----------------------------------------------------

MemoKey = tuple[str, str, int, int, float]  # fp32 sha256, int8 sha256, intra, inter threads, threshold
_decided: dict[MemoKey, VariantChoice] = {}


def remembered() -> dict[MemoKey, VariantChoice]:
    """This process's measured choices (the workers' parent passes them on)."""
    return dict(_decided)


def remember(choices: dict[MemoKey, VariantChoice]) -> None:
    """Take choices measured by another process (a worker, from its parent) as this process's own."""
    _decided.update(choices)


def choose_cpu_variant(
    directory: Path,
    manifest: Manifest,
    options: onnxruntime.SessionOptions,
    *,
    min_speedup: float = INT8_MIN_SPEEDUP,
) -> tuple[VariantChoice, onnxruntime.InferenceSession | None]:
    """What ``MARC_VARIANT=auto`` serves on CPU for the artifact in ``directory``. Returns the choice
    and, when it was measured just now, the chosen variant's session (ready to serve: no second
    load); None when no measurement was needed. Blocking (about a second, plus loading both files)."""
    if not has_per_row_int8(manifest):
        why = "the artifact has no int8 variant with per-row activation scales"
        return VariantChoice("fp32", "no-int8", why), None
    if min_speedup <= 0:
        why = "MARC_INT8_MIN_SPEEDUP=0: int8 wherever the artifact has it, not measured"
        return VariantChoice("int8", "preferred", why), None
    key: MemoKey = (
        manifest.variants["fp32"].sha256,
        manifest.variants["int8"].sha256,
        options.intra_op_num_threads,
        options.inter_op_num_threads,
        min_speedup,
    )
    if key in _decided:
        return _decided[key], None
    artifacts = {variant: load_artifact(directory, variant) for variant in ("fp32", "int8")}
    sessions = {
        variant: open_session(artifact, providers=[CPU], options=options)
        for variant, artifact in artifacts.items()
    }
    choice = measure_cpu_variant(sessions, probe_feed(artifacts["fp32"]), min_speedup=min_speedup)
    _decided[key] = choice
    return choice, sessions[choice.variant]
