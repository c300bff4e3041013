"""The soak's samples (`loadtest.soak`), one every few seconds: RSS and open file descriptors of every
process of the server (the `marc serve` parent and its workers), p50/p99 per route and errors by kind
from the clients' outcomes since the last sample, and the queue depth from /metrics."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from loadtest.processes import descendants
from loadtest.soak_traffic import Outcome


def process_label(pid: int, root: int) -> str:
    """``parent`` for the server's own process, else ``<pid> <what it runs>`` (a worker or a helper)."""
    if pid == root:
        return "parent"
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return str(pid)
    text = b" ".join(command).decode(errors="replace")
    what = (
        "worker"
        if "multiprocessing.spawn" in text
        else "resource_tracker"
        if "resource_tracker" in text
        else "child"
    )
    return f"{what} {pid}"


def rss_and_fds(pid: int) -> tuple[int, int] | None:
    """Resident set size (bytes) and open file descriptors of ``pid``; None if it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    rss = next(int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:"))
    return rss, fds


def queue_depth(url: str) -> float | None:
    try:
        text = httpx.get(f"{url}/metrics", timeout=10).text
    except httpx.HTTPError:
        return None
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "marc_queue_depth"
        for sample in family.samples
    )


def latency_by_route(outcomes: list[Outcome]) -> dict[str, dict[str, float]]:
    """p50/p99 (ms) of the answered requests per route (the slow client's time is its own upload)."""
    by_route: dict[str, list[float]] = {}
    for outcome in outcomes:
        if outcome.status == 200 and outcome.kind != "slow":
            by_route.setdefault(outcome.route, []).append(outcome.seconds * 1000)
    return {
        route: {
            "p50_ms": float(np.percentile(values, 50)),
            "p99_ms": float(np.percentile(values, 99)),
            "n": len(values),
        }
        for route, values in sorted(by_route.items())
    }


def error_kind(outcome: Outcome) -> str | None:
    """The error an outcome is, named by route and kind (None: answered 200, or a hang-up by design)."""
    if outcome.status == 200 or outcome.kind == "disconnect":
        return None
    return f"{outcome.route} {outcome.error}"


def sample(at: float, root: int, url: str, since: list[Outcome]) -> dict[str, Any]:
    """One sample at ``at`` s: the server's processes, and the outcomes of the requests sent since the
    last sample (``since``)."""
    processes = {}
    for pid in [root, *descendants(root)]:
        measured = rss_and_fds(pid)
        if measured is not None:
            processes[process_label(pid, root)] = {"rss_mb": measured[0] / 2**20, "fds": measured[1]}
    errors = Counter(kind for kind in map(error_kind, since) if kind is not None)
    return {
        "at_s": round(at, 1),
        "processes": processes,
        "latency": latency_by_route(since),
        "requests": len(since),
        "errors": dict(errors),
        "queue_depth": queue_depth(url),
        "load_1m": os.getloadavg()[0],  # the machine's, soak included (shared machines)
    }
