"""The service under test: `create_app(settings)` on a real uvicorn in a background thread
(`LiveServer`), or the real `marc serve` command in a subprocess (`ServeProcess`: signals, exit codes,
its own memory); both read their Prometheus metrics the same way."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from loadtest.processes import ServerProcess, bound_socket, environment_without_settings
from service.app import create_app
from service.runtime import ServiceRuntime
from service.settings import Settings

Samples = dict[str, list[tuple[dict[str, str], float]]]
# The servers under test serve int8 wherever the artifact has it, unmeasured, as before variants were
# measured at load: which variant runs faster on the tiny test model is a coin toss (it gains nothing
# from int8), and the tests compare against `tests.support.reference` on every machine. The measured
# choice has its own tests (tests/service/model/test_variant_choice.py).
TEST_VARIANTS = {"int8_min_speedup": 0.0}


def command_environment(**settings: object) -> dict[str, str]:
    """The environment of a `marc` command under test: this process's without its MARC_* variables,
    then `TEST_VARIANTS` and ``settings`` as MARC_* variables."""
    values = {**TEST_VARIANTS, **settings}
    return {
        **environment_without_settings(),
        **{f"MARC_{name.upper()}": str(value) for name, value in values.items()},
    }


def scrape_metrics(url: str) -> Samples:
    """Every sample of ``url``/metrics, by sample name: [(labels, value), ...]."""
    samples: Samples = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=10).text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def sum_samples(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(
        value
        for sample_labels, value in samples.get(name, [])
        if all(sample_labels.get(k) == v for k, v in labels.items())
    )


class _ServesMetrics:
    url: str

    def metrics(self) -> Samples:
        return scrape_metrics(self.url)

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels``."""
        return sum_samples(self.metrics(), name, **labels)


class LiveServer(_ServesMetrics):
    """`create_app(settings)` served by uvicorn in a background thread on a free port."""

    def __init__(self, **settings: Any) -> None:
        # A generous Redis timeout: a loaded CI machine must not turn a slow call into a "miss".
        defaults = {"max_wait_ms": 2.0, "cache_ttl_seconds": 600, "cache_timeout_ms": 2000, **TEST_VARIANTS}
        self.settings = Settings(**{**defaults, **settings})
        self._socket = bound_socket()
        self.port = self._socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            create_app(self.settings),
            log_level="warning",
            lifespan="on",
            timeout_keep_alive=self.settings.keep_alive_seconds,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )

    def __enter__(self) -> LiveServer:
        self._thread.start()
        deadline = time.monotonic() + 60
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the service did not start (see the log above)")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(30)
        self._socket.close()

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)

    @property
    def runtime(self) -> ServiceRuntime:
        """The running service's parts (what the app's lifespan built)."""
        return self._server.lifespan.state["runtime"]


class ServeProcess(_ServesMetrics, ServerProcess):
    """`marc serve` in a subprocess on a free port, configured by ``settings`` as MARC_* variables
    (and by nothing else: the caller's MARC_* variables are not passed on). Output goes to
    ``log_path``; ready when /readyz answers 200. Stopping kills it at once: tests that need a
    graceful stop send the signal themselves."""

    def __init__(self, log_path: Path, **settings: Any) -> None:
        env = command_environment(host="127.0.0.1", log_level="info", **settings)
        super().__init__(
            "marc serve",
            ["marc_serve", "serve"],
            log_path=log_path,
            ready_path="/readyz",
            env=env,
            start_timeout=60,
        )

    def stop(self, grace_seconds: float = 0.0) -> None:
        super().stop(grace_seconds)


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")
