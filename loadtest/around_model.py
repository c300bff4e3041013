"""The cold path around the model: what the service itself costs per new item, with the model's cost
taken out, in units of the bare endpoint's CPU per request measured in the same run.

On a GPU the model costs microseconds per item, so the service's own work decides throughput. This
measures that work where a CPU machine can: `marc serve` on the artifact's near-free twin
(`loadtest.near_free`: the same tokenizer, max_length and k, one random block of width 8), with a
private Redis, under closed loops of fresh texts in the shapes users send:

* ``embed_1``: single-item `/v1/embed` requests with an id (the README's request);
* ``embed_32``: 32-item `/v1/embed` requests, every item with an id;
* ``openai_32``: 32-input `/v1/embeddings` requests (OpenAI bodies carry no ids).

For each: the server's CPU per new item (all its threads, from /proc) less the CPU of the model's
runs (``marc_inference_cpu_seconds_total``: the runner threads' CPU while in ONNX Runtime; the
service's default on CPU runs each on one thread, so that is all of it), divided by the bare
endpoint's CPU per 1-item request (``loadtest.reference_servers bare`` under the same load). Targets:
<= 2.0 per single-item request, <= 0.25 per item of a 32-item request.

Beside them, in the same round and the same units: the floor no rework of the service can go under,
the artifact's tokenizer alone (`OnnxEncoder.prepare`: tokenise, pad and sort 32 fresh texts per
call, as the service does for a window; this process's CPU, nothing else running in it).

    python -m loadtest.around_model --artifact artifacts/default [--seconds 10] [--rounds 2]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
from prometheus_client.parser import text_string_to_metric_families

from loadtest.loadgen import LoadResult, Workload
from loadtest.near_free import near_free_artifact
from loadtest.phases import bare_endpoint, closed_loop
from loadtest.processes import RedisServer, ServerProcess, marc_serve
from loadtest.texts import item_texts

if TYPE_CHECKING:
    from service.model.encoder import OnnxEncoder

log = logging.getLogger("marc.bench")

AROUND_START = 300_000_000  # fresh text indexes, far from every other phase's
PHASE_TEXTS = 10_000_000
BATCH_ITEMS = 32
FLOOR_CALLS = 200  # tokenizer calls of BATCH_ITEMS texts per floor measurement (~0.2 s)
FLOOR_TEXTS = FLOOR_CALLS * BATCH_ITEMS  # fresh ones each round
TARGETS = {"embed_1": 2.0, "embed_32": 0.25, "openai_32": 0.25}


@dataclass(frozen=True)
class Phase:
    name: str
    route: str
    items: int
    concurrency: int

    @property
    def ids(self) -> bool:
        return self.route == "/v1/embed"


PHASES = (
    Phase("embed_1", "/v1/embed", 1, 32),
    Phase("embed_32", "/v1/embed", BATCH_ITEMS, 4),
    Phase("openai_32", "/v1/embeddings", BATCH_ITEMS, 4),
)


@dataclass
class AroundResult:
    phase: str
    route: str
    items_per_request: int
    items_per_second: float
    server_cpu_us_per_item: float
    model_us_per_item: float
    outside_us_per_item: float
    bare_cpu_us_per_request: float
    target: float
    tokenize_us_per_item: float  # the tokenizer alone, same round (`tokenize_floor`)

    @property
    def units(self) -> float:
        """Outside CPU per request (1 item) or per item (batches), in bare-endpoint requests."""
        return self.outside_us_per_item / self.bare_cpu_us_per_request

    @property
    def tokenize_units(self) -> float:
        """The tokenizer's own CPU per item, in the same units: what no rework can go under."""
        return self.tokenize_us_per_item / self.bare_cpu_us_per_request

    @property
    def met(self) -> bool:
        return self.units <= self.target

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "units": self.units, "tokenize_units": self.tokenize_units, "met": self.met}


def tokenize_floor(encoder: OnnxEncoder, start: int) -> float:
    """CPU us per item of the service's own tokenising and padding (`OnnxEncoder.prepare`) of fresh
    texts from index ``start`` on, ``BATCH_ITEMS`` per call: the least any request path that
    tokenises can cost per item."""
    texts = item_texts(start, FLOOR_TEXTS)
    calls = [texts[i : i + BATCH_ITEMS] for i in range(0, len(texts), BATCH_ITEMS)]
    encoder.prepare(calls[0], BATCH_ITEMS)  # the first call fills the tokenizer's caches
    began = time.process_time()  # all of this process's threads: a tokenizer thread pool included
    for call in calls[1:]:
        encoder.prepare(call, BATCH_ITEMS)
    return (time.process_time() - began) * 1e6 / (len(texts) - BATCH_ITEMS)


def model_seconds(url: str) -> float:
    """CPU seconds of every model run so far (``marc_inference_cpu_seconds_total``, all models)."""
    text = httpx.get(url + "/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "marc_inference_cpu_seconds"
        for sample in family.samples
        if sample.name.endswith("_total")
    )


def measure_phase(
    service: ServerProcess, phase: Phase, start: int, seconds: float, bare_cpu_us: float, tokenize_us: float
) -> tuple[AroundResult, LoadResult]:
    workload = Workload(
        route=phase.route, kind="unique", start=start, items_per_request=phase.items, ids=phase.ids
    )
    warm = max(4, 64 // phase.items)
    # The warm-up's runs are outside the CPU window too: read the model's time after it, just before.
    model_before = model_seconds(service.url)
    result = closed_loop(service, workload, seconds=seconds, concurrency=phase.concurrency, warmup=warm)
    model_after = model_seconds(service.url)
    if result.ok == 0:
        raise RuntimeError(f"{phase.name}: no successful request (statuses {result.statuses})")
    # closed_loop's CPU window covers the warm-up requests too: count their items.
    items = result.items_ok + warm * phase.items
    cpu_us = result.server_cpu_ms_per_request * result.requests * 1000 / items
    model_us = (model_after - model_before) * 1e6 / items
    around = AroundResult(
        phase.name,
        phase.route,
        phase.items,
        result.items_per_second,
        cpu_us,
        model_us,
        cpu_us - model_us,
        bare_cpu_us,
        TARGETS[phase.name],
        tokenize_us,
    )
    return around, result


def measure(
    artifact: Path,
    cache_dir: Path,
    redis_url: str,
    scratch: Path,
    seconds: float,
    rounds: int,
    settings: dict[str, str] | None = None,
) -> list[AroundResult]:
    """Every phase ``rounds`` times, each beside the bare endpoint; the best round per phase.
    ``settings``: MARC_* variables for the server (e.g. to compare a setting's values)."""
    # Imported only to measure (onnxruntime loads slowly); it sets TOKENIZERS_PARALLELISM=false.
    from service.model.encoder import load_encoder

    twin = near_free_artifact(artifact, cache_dir)
    encoder = load_encoder(twin, variant="fp32", provider="cpu")  # for the tokenizer floor
    service = marc_serve(
        "marc serve (near-free twin)",
        twin,
        redis_url,
        scratch / "serve-near-free.log",
        args=["--log-level", "warning"],
        settings=settings,
    )
    best: dict[str, AroundResult] = {}
    with service:
        bare_workload = Workload(kind="unique", start=AROUND_START - PHASE_TEXTS, ids=True)
        with bare_endpoint(service.url, bare_workload, scratch) as bare:
            for number in range(rounds):
                bare_result = closed_loop(bare, bare_workload, seconds=seconds, concurrency=32, warmup=64)
                bare_cpu_us = bare_result.server_cpu_ms_per_request * 1000
                tokenize_us = tokenize_floor(encoder, AROUND_START - 2 * PHASE_TEXTS + number * FLOOR_TEXTS)
                log.info(
                    "around the model, round %d: bare endpoint %.0f us CPU/request; "
                    "the tokenizer alone %.1f us/item = %.2f bare requests",
                    number + 1,
                    bare_cpu_us,
                    tokenize_us,
                    tokenize_us / bare_cpu_us,
                )
                for index, phase in enumerate(PHASES):
                    start = AROUND_START + (number * len(PHASES) + index) * PHASE_TEXTS
                    around, _ = measure_phase(service, phase, start, seconds, bare_cpu_us, tokenize_us)
                    log.info(
                        "  %s: %.0f us CPU/item, %.0f outside the model = %.2f bare requests",
                        phase.name,
                        around.server_cpu_us_per_item,
                        around.outside_us_per_item,
                        around.units,
                    )
                    if phase.name not in best or around.units < best[phase.name].units:
                        best[phase.name] = around
    return [best[phase.name] for phase in PHASES]


def table(results: list[AroundResult], machine: str) -> str:
    lines = [
        f"Cold path around the model (near-free twin, real Redis, fresh texts with ids), {machine}",
        "",
        "| requests | items/s | server CPU us/item | model runs us/item | outside the model us/item "
        "| bare endpoint us/request | outside / bare | target | met | tokenizer alone us/item (/ bare) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for r in results:
        what = f"{r.route} x {r.items_per_request}" + (" with ids" if r.route == "/v1/embed" else "")
        lines.append(
            f"| {what} | {r.items_per_second:,.0f} | {r.server_cpu_us_per_item:,.0f} "
            f"| {r.model_us_per_item:,.0f} | {r.outside_us_per_item:,.0f} "
            f"| {r.bare_cpu_us_per_request:,.0f} | {r.units:.2f} "
            f"| <= {r.target:g} | {'yes' if r.met else 'no'} "
            f"| {r.tokenize_us_per_item:.1f} ({r.tokenize_units:.2f}) |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from artifact.manifest import read_manifest
    from artifact.names import ArtifactError
    from marc.machine import machine_info

    parser = argparse.ArgumentParser(
        prog="python -m loadtest.around_model", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--artifact", type=Path, default=Path("artifacts/default"), help="(%(default)s)")
    parser.add_argument("--cache-dir", type=Path, default=Path(".cache/bench"), help="(%(default)s)")
    parser.add_argument("--seconds", type=float, default=10.0, help="per phase (%(default)s)")
    parser.add_argument("--rounds", type=int, default=2, help="best of (%(default)s)")
    parser.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="MARC_NAME=VALUE",
        help="a setting for the measured server (repeatable), e.g. MARC_MAX_WAIT_MS=0",
    )
    args = parser.parse_args(argv)
    settings = dict(item.partition("=")[::2] for item in args.setting)
    bad = [name for name in settings if not name.startswith("MARC_") or not settings[name]]
    if bad:
        parser.error(f"--setting takes MARC_NAME=VALUE, got {bad[0]!r}")
    try:
        read_manifest(args.artifact)
    except ArtifactError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch, RedisServer() as redis:
        results = measure(
            args.artifact, args.cache_dir, redis.url, Path(scratch), args.seconds, args.rounds, settings
        )
    shown = " ".join(f"{name}={value}" for name, value in settings.items())
    print(table(results, machine_info()["cpu"] + (f"; {shown}" if shown else "")))
    return 0 if all(r.met for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
