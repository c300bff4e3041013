"""`python -m loadtest.gpu_check` (`make gpu-check`): the GPU mode checked on a CUDA machine.

Two parts, each a table (markdown) and JSON rows:

* **service**: `marc serve --provider cuda` on the artifact must come up on CUDAExecutionProvider with
  the fp16 variant and the CUDA serving plan (/v1/models says so), and answer vectors within a cosine
  of `MIN_COSINE` of a CPU fp32 server on the same artifact; then its cold (new texts, 1 and 32 items
  per request) and hot (cached, with ids) items/s under a closed loop, beside the CPU server and beside
  itself with one worker and without IO binding (the provider defaults, measured side by side).
* **model**: the model's own limit for the served graph - the artifact's own fp16 and fp32 files under
  ONNX Runtime CUDA (plain runs and IO binding), the checkpoint's PyTorch module in fp16 on CUDA when
  torch has CUDA, and ONNX Runtime on the CPU - items/s per batch size and padded length.

Without CUDA it refuses with exit code 2 and one line saying what is missing (no CUDA provider in this
onnxruntime, or no session comes up on the device); ``--cpu`` runs only the model part's CPU rows
(the IO binding comparison on CPU; a dry run of the tool at any size). Exit code 1: a check failed.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime
from tokenizers import Tokenizer

from artifact.manifest import read_manifest
from artifact.names import ArtifactError
from marc.machine import machine_info
from service.model.encoder import CUDA, OnnxEncoder, load_encoder
from service.settings import Settings

if TYPE_CHECKING:
    from loadtest.loadgen import Workload
    from loadtest.processes import ServerProcess

log = logging.getLogger(__name__)

REFUSED, FAILED = 2, 1
# fp16 on CUDA vs fp32 on CPU, per text: the export's fp16 parity gate asks a mean cosine >= 0.999.
MIN_COSINE = 0.999
COSINE_TEXTS = 64
HOT_POOL = 2048


class GpuUnavailable(Exception):
    """No CUDA here: the message says what is missing."""


@dataclass(frozen=True)
class Sizes:
    batches: tuple[int, ...]
    lengths: tuple[int, ...]
    seconds: float  # per timed cell


FULL = {
    "cuda": Sizes(batches=(1, 8, 32, 128, 256, 512), lengths=(12, 26, 64), seconds=0.5),
    "cpu": Sizes(batches=(1, 16, 64), lengths=(26,), seconds=0.5),
}
QUICK = {
    "cuda": Sizes(batches=(1, 32, 256), lengths=(26,), seconds=0.2),
    "cpu": Sizes(batches=(1, 8), lengths=(12,), seconds=0.05),
}


def cuda_preflight(artifact: Path, device_id: int = 0) -> str:
    """Open the artifact on CUDA as the service would; the device's name, or GpuUnavailable."""
    providers = onnxruntime.get_available_providers()
    if CUDA not in providers:
        raise GpuUnavailable(
            f"this onnxruntime ({onnxruntime.__version__}) has no {CUDA} (it has {', '.join(providers)}): "
            "run the check with onnxruntime-gpu (`make gpu-check` installs it in .venv-gpu)"
        )
    try:
        load_encoder(artifact, provider="cuda", cuda_device_id=device_id)
    except ArtifactError as exc:
        raise GpuUnavailable(
            f"{CUDA} is listed but no session comes up on CUDA device {device_id} ({exc}): no GPU is "
            "visible, or the NVIDIA driver or the CUDA 13 libraries are missing (docs/gpu.md)"
        ) from None
    return gpu_name(device_id)


def gpu_name(device_id: int) -> str:
    if shutil.which("nvidia-smi") is None:
        return f"CUDA device {device_id}"
    fields = "--query-gpu=name,memory.total,driver_version"
    query = ["nvidia-smi", f"--id={device_id}", fields, "--format=csv,noheader"]
    done = subprocess.run(query, capture_output=True, text=True, check=False)
    return done.stdout.strip() or f"CUDA device {device_id}"


# --- the model's own limit -----------------------------------------------------------------------


def padded_batch(batch: int, length: int, vocab: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``batch`` rows padded to ``length``, like a window sorted by length: rows of length/2..length."""
    rng = np.random.default_rng(seed + batch * 1000 + length)
    input_ids = rng.integers(3, vocab, size=(batch, length), dtype=np.int64)
    attention_mask = np.zeros_like(input_ids)
    lengths = rng.integers(max(1, length // 2), length + 1, size=batch)
    lengths[0] = length
    for row, n in enumerate(lengths):
        attention_mask[row, :n] = 1
    return input_ids, attention_mask


def median_seconds(run: Callable[[], object], seconds: float, least: int = 5) -> float:
    for _ in range(2):
        run()  # warm-up: first-run allocations (and on CUDA, kernel selection) are not the speed
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < least:
        began = time.perf_counter()
        run()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def paired_seconds(
    first: Callable[[], object], second: Callable[[], object], seconds: float, least: int = 5
) -> tuple[float, float, float]:
    """Median seconds of ``first`` and of ``second`` run in alternating pairs, and the median over the
    pairs of first / second (a busy neighbour slows both runs of a pair, not their ratio)."""
    for run in (first, second, first, second):
        run()  # warm-up
    pairs: list[tuple[float, float]] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(pairs) < least:
        timed = []
        for run in (first, second) if len(pairs) % 2 == 0 else (second, first):
            began = time.perf_counter()
            run()
            timed.append(time.perf_counter() - began)
        pairs.append((timed[0], timed[1]) if len(pairs) % 2 == 0 else (timed[1], timed[0]))
    a, b = zip(*pairs, strict=True)
    return statistics.median(a), statistics.median(b), statistics.median(x / y for x, y in pairs)


def ort_rows(encoder: OnnxEncoder, sizes: Sizes, vocab: int) -> list[dict[str, Any]]:
    """The served code path (`OnnxEncoder.run_batch`) per batch size and padded length: plain runs and
    IO binding in alternating pairs on the same inputs."""

    def run(io_binding: bool, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        encoder.io_binding = io_binding
        return encoder.run_batch(input_ids, attention_mask)

    rows = []
    for length in sizes.lengths:
        for batch in sizes.batches:
            inputs = padded_batch(batch, min(length, encoder.artifact.max_length), vocab)
            plain, bound, speedup = paired_seconds(
                partial(run, False, *inputs), partial(run, True, *inputs), sizes.seconds
            )
            rows.append(
                {
                    "part": "model",
                    "engine": f"ort {encoder.device}",
                    "variant": encoder.artifact.variant,
                    "batch": batch,
                    "length": inputs[0].shape[1],
                    "ms": round(plain * 1000, 3),
                    "items_per_s": round(batch / plain, 1),
                    "io_binding_ms": round(bound * 1000, 3),
                    "io_binding_speedup": round(speedup, 3),
                }
            )
    return rows


def torch_rows(checkpoint: Path | None, sizes: Sizes, vocab: int) -> list[dict[str, Any]]:
    """The checkpoint's PyTorch module (the graph the artifact was exported from) in fp16 on CUDA."""
    try:
        import torch
    except ImportError:
        return [{"part": "model", "engine": "torch cuda", "skipped": "torch is not installed"}]
    if not torch.cuda.is_available():
        return [
            {"part": "model", "engine": "torch cuda", "skipped": f"torch {torch.__version__} has no CUDA"}
        ]
    if checkpoint is None or not checkpoint.is_dir():
        return [{"part": "model", "engine": "torch cuda", "skipped": f"no checkpoint at {checkpoint}"}]
    from marc.checkpoint import load_checkpoint

    module = load_checkpoint(checkpoint).encoder.eval().half().to("cuda")
    rows = []
    for length in sizes.lengths:
        for batch in sizes.batches:
            input_ids, attention_mask = (torch.from_numpy(a) for a in padded_batch(batch, length, vocab))

            def run(input_ids: Any = input_ids, attention_mask: Any = attention_mask) -> object:
                with torch.inference_mode():  # from host memory and back, as the service's runs
                    return module(input_ids.to("cuda"), attention_mask.to("cuda")).float().cpu()

            seconds = median_seconds(run, sizes.seconds)
            rows.append(
                {
                    "part": "model",
                    "engine": "torch cuda",
                    "variant": "fp16",
                    "batch": batch,
                    "length": length,
                    "ms": round(seconds * 1000, 3),
                    "items_per_s": round(batch / seconds, 1),
                }
            )
    return rows


def model_part(artifact: Path, devices: Sequence[str], quick: bool, device_id: int) -> list[dict[str, Any]]:
    manifest = read_manifest(artifact)
    vocab = Tokenizer.from_file(str(artifact / manifest.tokenizer.file)).get_vocab_size()
    rows = []
    for device in devices:
        sizes = (QUICK if quick else FULL)[device]
        variants = ["fp16", "fp32"] if device == "cuda" else ["fp32", "int8"]
        # On CPU the threads of one of the service's runners (its CPUs shared out among MARC_MODEL_RUNNERS).
        threads = Settings(artifact=artifact).serving_intra_threads if device == "cpu" else 0
        for variant in (v for v in variants if v in manifest.variants):
            encoder = load_encoder(
                artifact, variant=variant, provider=device, cuda_device_id=device_id, intra_threads=threads
            )
            rows += ort_rows(encoder, sizes, vocab)
        if device == "cuda":
            checkpoint = manifest.export.get("checkpoint")
            rows += torch_rows(Path(checkpoint) if checkpoint else None, sizes, vocab)
    return rows


# --- the service on CUDA -------------------------------------------------------------------------


# The service part's imports (HTTP clients, load generator, processes) are loaded when it runs: the
# preflight and the model part need the serving install alone, so they run inside the GPU image too.


def _card(server: ServerProcess) -> dict[str, Any]:
    import httpx

    return httpx.get(f"{server.url}/v1/models", timeout=30).json()["data"][0]


def _vectors(server: ServerProcess, texts: list[str]) -> np.ndarray:
    import httpx

    response = httpx.post(
        f"{server.url}/v1/embed", json={"items": [{"text": text} for text in texts]}, timeout=120
    )
    response.raise_for_status()
    return np.array([row["embedding"] for row in response.json()["data"]], dtype=np.float64)


def _load_row(
    name: str, server: ServerProcess, workload: Workload, seconds: float, clients: int
) -> dict[str, Any]:
    from loadtest.bench import closed_loop

    result = closed_loop(server, workload, seconds=seconds, concurrency=clients, warmup=clients)
    return {
        "part": "service",
        "row": name,
        "items_per_request": workload.items_per_request,
        "clients": clients,
        "items_per_s": round(result.items_per_second, 1),
        "p50_ms": result.latency_ms.get("p50"),
        "p99_ms": result.latency_ms.get("p99"),
        "server_cpu_ms_per_request": round(result.server_cpu_ms_per_request, 3),
        "statuses": result.statuses,
    }


def service_part(
    artifact: Path, seconds: float, quick: bool, logs: Path
) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows, and the checks that failed (empty: all passed)."""
    from loadtest.bench import warm_pool
    from loadtest.loadgen import Workload
    from loadtest.processes import RedisServer, marc_serve
    from loadtest.texts import item_texts

    rows: list[dict[str, Any]] = []
    failed: list[str] = []
    texts = item_texts(9_000_000, COSINE_TEXTS)
    cold1 = Workload(kind="unique", start=1_000_000, items_per_request=1)
    cold32 = Workload(kind="unique", start=2_000_000, items_per_request=32)
    hot = Workload(kind="pool", start=0, pool_size=HOT_POOL, items_per_request=1)
    with RedisServer() as redis_server:

        def serve(name: str, *args: str, **settings: str) -> ServerProcess:
            log_path = logs / f"{name}.log"
            return marc_serve(name, artifact, redis_server.url, log_path, args=args, settings=settings)

        with (
            serve("gpu", "--provider", "cuda") as gpu,
            serve("cpu-fp32", "--provider", "cpu", "--variant", "fp32") as cpu,
        ):
            card = _card(gpu)
            rows.append(
                {
                    "part": "service",
                    "row": "gpu card",
                    "provider": card["provider"],
                    "variant": card["variant"],
                    "variant_choice": card["variant_choice"]["why"],
                    "serving": card["serving"],
                }
            )
            if (card["provider"], card["variant"], card["serving"]["device"]) != (CUDA, "fp16", "cuda"):
                failed.append(
                    f"the GPU server serves {card['variant']} on {card['provider']}, not fp16 on CUDA"
                )
            a, b = _vectors(gpu, texts), _vectors(cpu, texts)
            cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
            rows.append(
                {
                    "part": "service",
                    "row": "gpu fp16 vs cpu fp32",
                    "texts": len(texts),
                    "min_cosine": round(float(cosine.min()), 6),
                    "mean_cosine": round(float(cosine.mean()), 6),
                }
            )
            if cosine.min() < MIN_COSINE:
                failed.append(f"GPU fp16 vectors reach only a cosine of {cosine.min():.5f} to CPU fp32")
            warm_pool(gpu.url, hot.start, HOT_POOL)
            rows.append(_load_row("gpu cold", gpu, cold1, seconds, 64))
            rows.append(_load_row("gpu cold", gpu, cold32, seconds, 16))
            rows.append(_load_row("gpu hot", gpu, hot, seconds, 64))
            rows.append(_load_row("cpu fp32 cold", cpu, cold1, seconds, 64))
        if not quick:  # the CUDA defaults side by side: one worker, no IO binding
            sides = {"gpu workers 1": {"MARC_WORKERS": "1"}, "gpu io binding off": {"MARC_IO_BINDING": "off"}}
            for start, (name, settings) in enumerate(sides.items(), start=3):
                cold = Workload(kind="unique", start=start * 1_000_000, items_per_request=32)
                with serve(name.replace(" ", "-"), "--provider", "cuda", **settings) as server:
                    rows.append(_load_row(f"{name} cold", server, cold, seconds, 16))
    return rows, failed


# --- report --------------------------------------------------------------------------------------


def _table(header: Sequence[str], rows: list[list[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return [*lines, *("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows), ""]


def _bound(row: dict[str, Any]) -> str:
    return f"{row['io_binding_ms']} ({row['io_binding_speedup']}x)" if "io_binding_ms" in row else "-"


def markdown(report: dict[str, Any]) -> str:
    machine = report["machine"]
    lines = [f"GPU check on {report['gpu']} ({machine['cpu']}, {machine['cores']} cores)", ""]
    rows = report["rows"]
    load = [r for r in rows if r["part"] == "service" and "items_per_s" in r]
    if load:
        header = [
            "service",
            "items/request",
            "clients",
            "items/s",
            "p50 ms",
            "p99 ms",
            "server CPU ms/request",
        ]
        keys = [
            "row",
            "items_per_request",
            "clients",
            "items_per_s",
            "p50_ms",
            "p99_ms",
            "server_cpu_ms_per_request",
        ]
        lines += _table(header, [[r[k] for k in keys] for r in load])
    model = [r for r in rows if r["part"] == "model" and "ms" in r]
    if model:
        header = ["model", "variant", "batch", "length", "ms", "items/s", "IO binding ms (speedup)"]
        lines += _table(
            header,
            [
                [r["engine"], r["variant"], r["batch"], r["length"], r["ms"], r["items_per_s"], _bound(r)]
                for r in model
            ],
        )
    for r in rows:
        if "skipped" in r:
            lines.append(f"- {r['engine']}: skipped ({r['skipped']})")
        elif r["part"] == "service" and "items_per_s" not in r:
            details = {k: v for k, v in r.items() if k not in ("part", "row")}
            lines.append(f"- {r['row']}: {json.dumps(details)}")
    lines += [f"- FAILED: {check}" for check in report["failed"]] or ["- every check passed"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.gpu_check", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--artifact",
        type=Path,
        required=True,
        help="artifact with an fp16 variant (`make gpu-check` builds artifacts/default-gpu)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("reports/gpu-check.json"), help="JSON report (%(default)s)"
    )
    parser.add_argument("--markdown", type=Path, help="also write the tables to this file")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per load phase (%(default)s)")
    parser.add_argument(
        "--quick", action="store_true", help="few sizes, no side-by-side servers (a smoke run)"
    )
    parser.add_argument("--cpu", action="store_true", help="no CUDA needed: only the model part's CPU rows")
    parser.add_argument("--device-id", type=int, default=0, help="CUDA device (%(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not (args.artifact / "manifest.json").is_file():
        print(f"gpu-check: {args.artifact} is not an artifact (no manifest.json)", file=sys.stderr)
        return REFUSED
    rows: list[dict[str, Any]] = []
    failed: list[str] = []
    if args.cpu:
        gpu = "no GPU (--cpu)"
        rows += model_part(args.artifact, ["cpu"], args.quick, args.device_id)
    else:
        try:
            gpu = cuda_preflight(args.artifact, args.device_id)
        except GpuUnavailable as exc:
            print(f"gpu-check: refusing: {exc}", file=sys.stderr)
            return REFUSED
        log.info("gpu-check on %s", gpu)
        logs = args.out.parent / "gpu-check-logs"  # the servers' logs, kept for a failed check
        logs.mkdir(parents=True, exist_ok=True)
        service_rows, failed = service_part(args.artifact, args.duration, args.quick, logs)
        rows += service_rows
        rows += model_part(args.artifact, ["cuda", "cpu"], args.quick, args.device_id)
    machine = machine_info()
    report = {"gpu": gpu, "machine": machine, "artifact": str(args.artifact), "rows": rows, "failed": failed}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    table = markdown(report)
    if args.markdown:
        args.markdown.write_text(table)
    print(table)
    return FAILED if failed else 0


if __name__ == "__main__":
    sys.exit(main())
