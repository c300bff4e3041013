"""Processes started on a free port of 127.0.0.1 and always stopped: an HTTP server (`python -m ...`) and
a private redis-server. The benchmark runs on them; the tests' helpers (tests/support) build on them."""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import redis

HOST = "127.0.0.1"


def bound_socket() -> socket.socket:
    """A TCP socket bound to a free port of 127.0.0.1: hand it to a server and no one can take the port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, 0))
    return sock


def free_port() -> int:
    with bound_socket() as sock:
        return sock.getsockname()[1]


def environment_without_settings() -> dict[str, str]:
    """This process's environment without MARC_* variables: a server started with it runs on the
    settings it is given, not on those of the caller's shell."""
    return {k: v for k, v in os.environ.items() if not k.startswith("MARC_")}


def _cpu_seconds(pid: int) -> float:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # it just exited
        return 0.0
    # Fields after the ")" that ends the command name: utime and stime are the 12th and 13th.
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid``, depth first (Linux)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            direct = [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue
        for child in direct:
            found += [child, *descendants(child)]
    return found


class ServerProcess:
    """``python -m <args> --port P`` serving HTTP on a free port; ready when ``ready_path`` answers 200.

    The server's output goes to ``log_path`` (a full pipe would block it; it is shown on failure).
    ``env`` is the server's whole environment (default: this process's)."""

    def __init__(
        self,
        name: str,
        args: list[str],
        *,
        log_path: Path,
        ready_path: str = "/healthz",
        env: dict[str, str] | None = None,
        start_timeout: float = 180.0,
        command: list[str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.log_path = log_path
        # ``command`` (default ``python -m``) runs another program the same way, e.g. a peer's CLI.
        self._command = [*(command or [sys.executable, "-m"]), *args, "--port", str(self.port)]
        self._ready_path = ready_path
        self._cwd = cwd
        self._env = env
        self._start_timeout = start_timeout
        self.process: subprocess.Popen[bytes] | None = None

    def _running(self) -> subprocess.Popen[bytes]:
        if self.process is None:
            raise RuntimeError(f"{self.name} is not running")
        return self.process

    @property
    def pid(self) -> int:
        return self._running().pid

    def start(self, wait_ready: bool = True) -> ServerProcess:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self._command, stdout=log, stderr=subprocess.STDOUT, env=self._env, cwd=self._cwd
            )
        if wait_ready:
            self.wait_ready()
        return self

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self._start_timeout
        while True:
            if self.process is None or self.process.poll() is not None:
                code = None if self.process is None else self.process.returncode
                raise RuntimeError(f"{self.name} exited with {code}:\n{self.log()[-4000:]}")
            try:
                if httpx.get(self.url + self._ready_path, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"{self.name} not ready after {self._start_timeout:.0f} s:\n{self.log()[-4000:]}"
                )
            time.sleep(0.05)

    def signal(self, sig: signal.Signals) -> None:
        self._running().send_signal(sig)

    def wait_exit(self, timeout: float) -> int:
        return self._running().wait(timeout)

    def log(self) -> str:
        """Everything the server has written so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.is_file() else ""

    def cpu_seconds(self) -> float:
        """User + system CPU time the server and its live child processes (`marc serve --workers`)
        have used so far, all threads; NaN off Linux."""
        if not Path(f"/proc/{self.pid}/stat").is_file():
            return math.nan
        return sum(_cpu_seconds(pid) for pid in [self.pid, *descendants(self.pid)])

    def stop(self, grace_seconds: float = 30.0) -> None:
        """SIGTERM, then SIGKILL if it is still up after ``grace_seconds`` (0: SIGKILL at once)."""
        if self.process is not None and self.process.poll() is None:
            if grace_seconds > 0:
                self.process.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.process.wait(grace_seconds)
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait(10)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def marc_serve(
    name: str,
    artifact: Path,
    redis_url: str,
    log_path: Path,
    *,
    args: Sequence[str] = (),
    settings: dict[str, str] | None = None,
) -> ServerProcess:
    """`marc serve` on ``artifact`` with ``redis_url``, configured by ``args`` and the MARC_*
    ``settings`` only (not by the caller's environment); ready when /readyz answers 200."""
    command = ["marc_serve", "serve", "--artifact", str(artifact), "--redis-url", redis_url, *args]
    env = {**environment_without_settings(), **(settings or {})}
    return ServerProcess(name, command, log_path=log_path, ready_path="/readyz", env=env)


class RedisServer:
    """A private, empty redis-server (no persistence) on a free port; ``extra_args`` go on its command
    line. Once stopped it can be started again on the same port (empty)."""

    def __init__(self, *extra_args: str, cwd: Path | None = None) -> None:
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.port = free_port()
        self.url = f"redis://{HOST}:{self.port}/0"
        self._command = ["redis-server", "--port", str(self.port), "--bind", HOST]
        self._command += ["--save", "", "--appendonly", "no", *extra_args]
        self._cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None
        self._client: redis.Redis | None = None

    def start(self) -> RedisServer:
        self.process = subprocess.Popen(
            self._command, cwd=self._cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self._client = redis.Redis(host=HOST, port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 10
        while True:
            try:
                self._client.ping()
                return self
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    self.stop()
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

    def sampled_key_bytes(self, count: int = 200, match: str | None = None) -> float:
        """Mean ``MEMORY USAGE`` of up to ``count`` keys matching ``match`` (key + value + per-key
        structures; the expiry entry and the hash tables' growth are not in it). Unlike a
        ``used_memory`` difference it does not move with allocator noise, so it holds for a few keys."""
        keys = self.client.scan_iter(match=match, count=count)
        sizes = [int(self.client.memory_usage(key) or 0) for key, _ in zip(keys, range(count), strict=False)]
        return sum(sizes) / len(sizes) if sizes else math.nan

    def key_count(self) -> int:
        return int(self.client.dbsize())

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
