"""`make soak`: one `marc serve --workers 2` for minutes to hours under mixed traffic, model reloads and
Redis faults, sampled all along; pass criteria in `loadtest.soak_report`.

    python -m loadtest.soak --artifact artifacts/default --minutes 20 --out reports/soak

The service serves one model name (``soak``) from a symlink that flips between two artifacts (the
given one and ``--other``, by default its near-free twin: `loadtest.near_free`) with a SIGHUP reload
every ``--reload-every`` seconds, so every reload really swaps the model. A private redis-server on a
free port is its cache; it is restarted (empty) at 30% and 70% of the run and paused (SIGSTOP) at 50%,
each for ``--outage`` seconds. The clients (`loadtest.soak_traffic`) run throughout; a sample
(`loadtest.soak_sampler`) is taken every ``--sample-every`` seconds. After the run the server is stopped,
each artifact's encoder computes the reference vectors once for every text the clients got back, and
the verdict, JSON, markdown and PNG go to ``--out``. Exit status 0 when every criterion passed, 1 if not.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from loadtest.processes import RedisServer, ServerProcess, environment_without_settings
from loadtest.soak_report import Bounds, ids_criterion, vector_criterion, verdict, write
from loadtest.soak_sampler import sample
from loadtest.soak_traffic import Plan, Returned, Traffic
from marc.machine import cpu_model, load_average

log = logging.getLogger(__name__)

MODEL = "soak"
REDIS_RESTARTS_AT = (0.3, 0.7)  # fractions of the run
REDIS_PAUSE_AT = 0.5


def _serve(
    link: Path, redis_url: str, log_path: Path, workers: int, cache_timeout_ms: float | None
) -> ServerProcess:
    env = {
        **environment_without_settings(),
        "MARC_ARTIFACTS": f"{MODEL}={link}",
        "MARC_REDIS_URL": redis_url,
        "MARC_WORKERS": str(workers),
        # Both artifacts' variant fixed (int8 where there is one, unmeasured): the references' too.
        "MARC_INT8_MIN_SPEEDUP": "0",
        "MARC_LOG_LEVEL": "info",
    }
    if cache_timeout_ms is not None:
        env["MARC_CACHE_TIMEOUT_MS"] = str(cache_timeout_ms)
    return ServerProcess(
        "marc serve", ["marc_serve", "serve"], log_path=log_path, ready_path="/readyz", env=env
    )


def _served_dims(url: str) -> tuple[int, ...]:
    card = next(m for m in httpx.get(f"{url}/v1/models", timeout=10).json()["data"] if m["id"] == MODEL)
    return tuple(sorted(card.get("dimensions") or [card["dim"]]))


def _reload_counts(url: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=10).text):
        if family.name == "marc_model_reloads":
            for s in family.samples:
                if s.name.endswith("_total"):
                    counts[s.labels["result"]] = counts.get(s.labels["result"], 0) + s.value
    return counts


class Timeline:
    """The soak's events, each run at its time on its own thread, recorded as {name, at_s, until_s}."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.events: list[dict[str, Any]] = []
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()

    def at(self, seconds: float, name: str, action: Callable[[], float | None]) -> None:
        def run() -> None:
            if self._stop.wait(max(0.0, self.started + seconds - time.monotonic())):
                return
            began = time.monotonic() - self.started
            action()
            self.events.append(
                {"name": name, "at_s": round(began, 2), "until_s": round(time.monotonic() - self.started, 2)}
            )
            log.info("soak: %s at %.0f s", name, began)

        thread = threading.Thread(target=run, name=f"soak-{name}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(120)


def references(artifacts: list[Path], returned: list[Returned]) -> dict[str, dict[str, np.ndarray]]:
    """Each artifact's vectors, computed once here (its own encoder, the variant the service serves),
    for every text the clients got back under its fingerprint (or under none: /v1/embeddings)."""
    from service.model.encoder import load_encoder

    found: dict[str, dict[str, np.ndarray]] = {}
    for artifact in artifacts:
        encoder = load_encoder(artifact, variant="auto", provider="cpu", int8_min_speedup=0)
        fingerprint = encoder.artifact.fingerprint
        texts = sorted({r.text for r in returned if r.fingerprint in (fingerprint, None)})
        vectors = encoder.embed(texts, max_batch_size=32).vectors if texts else np.zeros((0, encoder.dim))
        found[fingerprint] = dict(zip(texts, np.asarray(vectors, np.float32), strict=True))
        del encoder
    return found


def run_soak(args: argparse.Namespace) -> dict[str, Any]:
    minutes = args.minutes
    duration = minutes * 60
    artifacts = [args.artifact.resolve(), args.other.resolve()]
    bounds = Bounds(warmup_s=args.warmup, window_s=2 * args.reload_every, grace_s=args.grace)
    work = Path(tempfile.mkdtemp(prefix="marc-soak-"))
    link = work / "current"
    link.symlink_to(artifacts[0])
    load_before = load_average()
    samples: list[dict[str, Any]] = []
    with (
        RedisServer(cwd=work) as redis_server,
        _serve(link, redis_server.url, work / "serve.log", args.workers, args.cache_timeout_ms) as server,
    ):
        plan = Plan(model=MODEL, dims=_served_dims(server.url))
        plan.rates = {kind: rate * args.rate_scale for kind, rate in plan.rates.items()}
        started = time.monotonic()
        timeline = Timeline(started)
        traffic = Traffic(server.url, plan, started).start()
        reloads = 0

        def reload() -> None:
            nonlocal reloads
            reloads += 1
            target = artifacts[reloads % 2]
            staged = work / "next"
            staged.symlink_to(target)
            staged.replace(link)  # atomic: the service never reads a missing link
            server.signal(signal.SIGHUP)

        def redis_restart() -> None:
            redis_server.stop()
            time.sleep(args.outage)
            redis_server.start()

        def redis_pause() -> None:
            assert redis_server.process is not None
            redis_server.process.send_signal(signal.SIGSTOP)
            time.sleep(args.outage)
            redis_server.process.send_signal(signal.SIGCONT)

        for k in range(1, int(duration // args.reload_every) + 1):
            if k * args.reload_every < duration - 1:
                timeline.at(k * args.reload_every, "reload", reload)
        for fraction in REDIS_RESTARTS_AT:
            timeline.at(fraction * duration, "redis restart", redis_restart)
        timeline.at(REDIS_PAUSE_AT * duration, "redis pause", redis_pause)

        seen = 0
        next_sample = started + args.sample_every
        while True:
            time.sleep(max(0.0, next_sample - time.monotonic()))
            outcomes = traffic.outcomes[seen:]
            seen += len(outcomes)
            samples.append(sample(time.monotonic() - started, server.pid, server.url, outcomes))
            last = samples[-1]
            log.info(
                "soak %5.0f s: %d requests, errors %s, RSS %s",
                last["at_s"],
                last["requests"],
                last["errors"] or 0,
                {p: round(v["rss_mb"]) for p, v in last["processes"].items()},
            )
            if time.monotonic() - started >= duration:
                break
            next_sample += args.sample_every
        timeline.stop()
        traffic.stop()
        reload_counts = _reload_counts(server.url)
        sighups = sum(e["name"] == "reload" for e in timeline.events)
    outages = [e for e in timeline.events if e["name"] != "reload"]
    reloads_ok = {
        "ok": reload_counts.get("ok", 0) == sighups * args.workers and not reload_counts.get("failed", 0),
        "sighups": sighups,
        "reloads_by_result": reload_counts,  # each worker reloads on each SIGHUP
    }
    vectors = vector_criterion(traffic.returned, references(artifacts, traffic.returned))
    report = {
        "title": f"marc serve --workers {args.workers}, {minutes:g}-minute soak on {cpu_model()}, "
        f"{os.cpu_count()} cores; load average {load_before[0]:.1f} before, {load_average()[0]:.1f} after",
        "config": {
            "minutes": minutes,
            "workers": args.workers,
            "artifacts": [str(a) for a in artifacts],
            "reload_every_s": args.reload_every,
            "sample_every_s": args.sample_every,
            "outage_s": args.outage,
            "rates_per_s": plan.rates,
            "dims": list(plan.dims),
            "bounds": vars(bounds),
        },
        "events": timeline.events,
        "samples": samples,
        "totals": {
            "requests": len(traffic.outcomes),
            "by_kind": {k: sum(o.kind == k for o in traffic.outcomes) for k in plan.rates},
            "vectors_checked": len(traffic.returned),
        },
        "verdict": verdict(
            samples,
            traffic.outcomes,
            outages,
            vectors,
            ids_criterion(traffic.stored_ids, traffic.unknown_ids, outages, bounds),
            reloads_ok,
            bounds,
        ),
    }
    paths = write(report, args.out, rows_every_s=args.rows_every)
    print(
        f"soak {'PASSED' if report['verdict']['passed'] else 'FAILED'}: "
        + ", ".join(str(p) for p in paths.values())
    )
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", type=Path, required=True, help="the model served first")
    parser.add_argument(
        "--other", type=Path, help="the model every other reload swaps in (default: the near-free twin)"
    )
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--reload-every", type=float, default=120.0, help="seconds between reloads (120)")
    parser.add_argument("--sample-every", type=float, default=10.0, help="seconds between samples (10)")
    parser.add_argument("--warmup", type=float, default=240.0, help="seconds before the criteria apply (240)")
    parser.add_argument("--outage", type=float, default=5.0, help="seconds Redis is down or paused (5)")
    parser.add_argument(
        "--grace", type=float, default=5.0, help="errors allowed this long after an outage (5)"
    )
    parser.add_argument(
        "--rate-scale", type=float, default=1.0, help="multiplies every client's request rate"
    )
    parser.add_argument(
        "--rows-every", type=float, default=120.0, help="seconds between the markdown table's rows"
    )
    parser.add_argument(
        "--cache-timeout-ms",
        type=float,
        help="the service's MARC_CACHE_TIMEOUT_MS (default: the service's own); the short soak of the tests "
        "raises it: there the cores are shared with the rest of the suite, and a lookup whose Redis calls "
        "time out on starved cores answers 503 (what the real soak is there to count)",
    )
    parser.add_argument("--out", type=Path, default=Path("reports/soak"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    for chatty in ("httpx", "openai"):  # a line per request
        logging.getLogger(chatty).setLevel(logging.WARNING)
    if args.other is None:
        from loadtest.near_free import near_free_artifact

        args.other = near_free_artifact(args.artifact, Path(".cache") / "soak")
    args.out.mkdir(parents=True, exist_ok=True)
    # SIGTERM (a timeout, `kill`) unwinds like Ctrl-C: the server, its workers and Redis are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    return 0 if run_soak(args)["verdict"]["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
