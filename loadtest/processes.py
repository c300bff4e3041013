"""Processes the benchmark starts and always stops: HTTP servers and a private redis-server, each on
a free port of 127.0.0.1."""

from __future__ import annotations

import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

import httpx
import redis

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


class ServerProcess:
    """``python -m <module> ...`` serving HTTP on a free port; ready when ``ready_path`` answers 200."""

    def __init__(
        self,
        name: str,
        args: list[str],
        *,
        ready_path: str = "/healthz",
        env: dict[str, str] | None = None,
        start_timeout: float = 180.0,
    ) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self._args = [sys.executable, "-m", *args, "--port", str(self.port)]
        self._ready_path = ready_path
        self._env = {**os.environ, **(env or {})}
        self._start_timeout = start_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError(f"{self.name} is not running")
        return self._process.pid

    def cpu_seconds(self) -> float:
        """User + system CPU time the server has used so far (all its threads); NaN off Linux."""
        stat = Path(f"/proc/{self.pid}/stat")
        if not stat.is_file():
            return math.nan
        # Fields after the ")" that ends the command name: utime and stime are the 12th and 13th.
        fields = stat.read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def __enter__(self) -> ServerProcess:
        # The server's output goes to a file: a full pipe would block it, and it is shown on failure.
        self._log = tempfile.TemporaryFile()
        self._process = subprocess.Popen(
            self._args, stdout=self._log, stderr=subprocess.STDOUT, env=self._env
        )
        deadline = time.monotonic() + self._start_timeout
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self._process.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.url + self._ready_path, timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError(
                    f"{self.name} not ready after {self._start_timeout:.0f} s:\n{self.output()}"
                )
            time.sleep(0.2)

    def output(self) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-4000:]

    def __exit__(self, *exc: object) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(10)
        self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None


class RedisServer:
    """A private, empty redis-server (no persistence) for the cache and the memory measurement."""

    def __init__(self) -> None:
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.port = free_port()
        self.url = f"redis://{HOST}:{self.port}/0"
        self._process: subprocess.Popen[bytes] | None = None
        self._client: redis.Redis | None = None

    def __enter__(self) -> RedisServer:
        command = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            HOST,
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        self._process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._client = redis.Redis(host=HOST, port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 10
        while True:
            try:
                self._client.ping()
                return self
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    self.__exit__()
                    raise
                time.sleep(0.05)

    @property
    def client(self) -> redis.Redis:
        if self._client is None:
            raise RuntimeError("redis-server is not running")
        return self._client

    def data_memory(self) -> int:
        """``used_memory`` less the client connections' buffers: what stored keys cost (plus a
        constant), not how many connections the service happens to have open. Redis updates
        mem_clients_normal in its client cron (every 100 ms) while used_memory is exact, so right after
        traffic the two disagree: read until two readings 200 ms apart agree (at most 5 s)."""

        def reading() -> int:
            info = self.client.info("memory")
            return int(info["used_memory"]) - int(info.get("mem_clients_normal", 0))

        last, deadline = reading(), time.monotonic() + 5
        while time.monotonic() < deadline:
            time.sleep(0.2)
            current = reading()
            if current == last:
                break
            last = current
        return last

    def sampled_key_bytes(self, count: int = 200) -> float:
        """Mean ``MEMORY USAGE`` of up to ``count`` keys (key + value + per-key structures; the
        expiry entry and the hash tables' growth are not in it)."""
        sizes = [
            int(self.client.memory_usage(key) or 0)
            for key, _ in zip(self.client.scan_iter(count=count), range(count), strict=False)
        ]
        return sum(sizes) / len(sizes) if sizes else math.nan

    def key_count(self) -> int:
        return int(self.client.dbsize())

    def __exit__(self, *exc: object) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._process is not None:
            self._process.terminate()
            self._process.wait(10)
            self._process = None
