"""Redis for tests: the shared server at 127.0.0.1:6379 under a unique key prefix per test, or a
private redis-server a test may kill, pause and restart."""

from __future__ import annotations

import signal
import time
import uuid
from pathlib import Path

import redis

from loadtest.processes import RedisServer, free_port

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


class RedisProcess(RedisServer):
    """A private redis-server with the faults tests inject (`start` again after `stop`/`kill`: same
    port, empty)."""

    def wait_for_keys(self, keys: int, timeout_seconds: float = 30) -> None:
        """Until Redis holds at least ``keys`` keys: the service's queued writes have been flushed
        (its answer does not wait for them)."""
        deadline = time.monotonic() + timeout_seconds
        while self.key_count() < keys:
            assert time.monotonic() < deadline, f"fewer than {keys} keys in Redis after {timeout_seconds:g} s"
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: the server vanishes without closing its connections cleanly."""
        if self.process is not None:
            self.process.kill()
        self.stop()

    def pause(self) -> None:
        """SIGSTOP: connections stay open but nothing answers (a hung or swapping server)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)


class RedisClusterProcesses:
    """A Redis Cluster of ``nodes`` private primaries on free ports, hash slots split evenly."""

    def __init__(self, directory: Path, nodes: int = 3) -> None:
        self.nodes: list[RedisProcess] = []
        self._bus_ports: list[int] = []  # explicit: the default, port + 10000, may not exist
        for index in range(nodes):
            node_dir = directory / f"node{index}"
            node_dir.mkdir(parents=True, exist_ok=True)
            self._bus_ports.append(free_port())
            cluster_args = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf")
            bus_port = ("--cluster-port", str(self._bus_ports[-1]))
            self.nodes.append(RedisProcess(*cluster_args, *bus_port, cwd=node_dir))
        self.url = f"redis+cluster://127.0.0.1:{self.nodes[0].port}"

    def __enter__(self) -> RedisClusterProcesses:
        for node in self.nodes:
            node.start()
        clients = [redis.Redis(port=node.port) for node in self.nodes]
        try:
            bounds = [round(i * 16384 / len(self.nodes)) for i in range(len(self.nodes) + 1)]
            for client, low, high in zip(clients, bounds, bounds[1:], strict=False):
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", low, high - 1)
            for node, bus_port in zip(self.nodes[1:], self._bus_ports[1:], strict=True):
                clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", node.port, bus_port)
            deadline = time.monotonic() + 20
            expected = f"cluster_known_nodes:{len(self.nodes)}".encode()
            while not all(
                b"cluster_state:ok" in info and expected in info
                for info in (client.execute_command("CLUSTER", "INFO") for client in clients)
            ):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the {len(self.nodes)}-node Redis Cluster did not come up")
                time.sleep(0.05)
        finally:
            for client in clients:
                client.close()
        return self

    def __exit__(self, *exc: object) -> None:
        for node in self.nodes:
            node.stop()
