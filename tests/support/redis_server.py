"""Redis for tests: the shared server at 127.0.0.1:6379 under a unique key prefix per test, or a
private redis-server a test may kill, pause and restart."""

from __future__ import annotations

import signal
import uuid

import redis

from loadtest.processes import RedisServer

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
