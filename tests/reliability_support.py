"""Helpers of the reliability suite that `service_support` does not have: the service as a real
`marc serve` subprocess (signals, exit codes, its own RSS) and a bounded concurrent load."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from service_support import LiveServer, free_port

MARC = Path(sys.executable).with_name("marc")


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


class ServeProcess:
    """`marc serve` in a subprocess on a free port, configured through MARC_* variables."""

    # Same metric helpers as the in-thread server (they only need `self.url`).
    metrics = LiveServer.metrics
    metric = LiveServer.metric

    def __init__(self, log_path: Path, **settings: Any) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.env = {
            **os.environ,
            "MARC_PORT": str(self.port),
            "MARC_HOST": "127.0.0.1",
            "MARC_LOG_LEVEL": "info",
            **{f"MARC_{name.upper()}": str(value) for name, value in settings.items()},
        }
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, wait_ready: bool = True) -> ServeProcess:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [str(MARC), "serve"], env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        if wait_ready:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"marc serve exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"marc serve not ready within {timeout} s:\n{self.log()}")

    def wait_exit(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def signal(self, sig: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.is_file() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def __enter__(self) -> ServeProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class LoadResult:
    """What a bounded load saw: status codes, transport errors by type, latencies per status."""

    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    seconds: dict[int, list[float]] = field(default_factory=dict)
    responses: list[httpx.Response] = field(default_factory=list)

    @property
    def sent(self) -> int:
        return sum(self.statuses.values()) + sum(self.errors.values())


async def post_all(
    url: str, path: str, bodies: list[dict[str, Any]], *, concurrency: int, timeout: float = 60
) -> LoadResult:
    """POST every body, at most ``concurrency`` at once, each on its own connection slot."""
    result = LoadResult()
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:

        async def one(body: dict[str, Any]) -> None:
            async with gate:
                started = time.perf_counter()
                try:
                    response = await client.post(path, json=body)
                except httpx.TransportError as exc:
                    result.errors[type(exc).__name__] += 1
                    return
                result.statuses[response.status_code] += 1
                result.seconds.setdefault(response.status_code, []).append(time.perf_counter() - started)
                result.responses.append(response)

        await asyncio.gather(*(one(body) for body in bodies))
    return result
