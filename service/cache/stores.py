"""Vector caches: Redis (shared by all replicas) and an in-process LRU (the embedded default).

Both store the value bytes of `service.cache.values` under the keys from `service.cache.keys`. A cache never
fails a request: `RedisCache` raises `CacheUnavailable` (or a subclass saying why Redis was not asked)
for any Redis error or timeout, the caller counts it and carries on without the cache.

Connections: at most ``max_connections`` calls use Redis at once; a burst waits for a free connection,
within the same ``timeout`` as the call (so a wait is never longer than the timeout a slow Redis
costs). A wait that runs out is `CacheBusy`: the pool is too small for the burst, Redis is fine, so it
does not count as a failure.

A small circuit breaker keeps a dead or hung Redis from costing every request a timeout: it opens on a
connection failure (refused, reset, unknown host) or after ``timeouts_to_open`` consecutive timeouts.
While open, calls are skipped (`CacheSkipped`, Redis is not asked); once ``retry_seconds`` have passed,
the next call - one call, not every request of the moment - probes Redis: success closes the breaker,
failure skips Redis for another ``retry_seconds``. A single slow call - e.g. the event loop starved of
CPU for longer than the timeout - only fails its own request; timeouts of calls that were already in
flight together (one stall) count once; any successful call resets the count. redis-py reconnects by
itself on the next attempt.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal, Protocol, TypeVar

import hiredis
from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger(__name__)

CacheStatus = Literal["ok", "skipped"]
T = TypeVar("T")
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
# SET every key to its value with the TTL (ARGV[1] seconds; 0 = none), in one command.
SET_MANY_SCRIPT = """
local ttl = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  if ttl > 0 then
    redis.call('SET', key, ARGV[i + 1], 'EX', ttl)
  else
    redis.call('SET', key, ARGV[i + 1])
  end
end
return #KEYS
"""
SET_MANY_SHA = hashlib.sha1(SET_MANY_SCRIPT.encode()).hexdigest()
# Entries per script call: a script runs atomically, so this bounds how long it holds Redis (~1 us
# per SET) while other clients wait.
WRITE_CHUNK = 512


def resolve_cluster_url(url: str, cluster: bool) -> tuple[str, bool]:
    """``redis+cluster://`` / ``rediss+cluster://`` -> the plain URL redis-py takes, and cluster=True."""
    scheme, sep, rest = url.partition("://")
    if scheme in CLUSTER_SCHEMES:
        return f"{CLUSTER_SCHEMES[scheme]}{sep}{rest}", True
    return url, cluster


class CacheUnavailable(RuntimeError):
    """The cache could not answer; treat every key as a miss."""


class CacheSkipped(CacheUnavailable):
    """Redis was not asked: it failed recently and is skipped until a probe finds it back."""


class CacheTimeout(CacheUnavailable):
    """A Redis call got no answer within the cache timeout (Redis slow, or this process starved of CPU)."""


class CacheDisconnected(CacheUnavailable):
    """The connection to Redis was refused or lost: the server is gone, or restarted (and then, without
    persistence, empty)."""


class CacheBusy(CacheUnavailable):
    """No Redis connection came free within the cache timeout (a burst larger than the pool)."""


class Cache(Protocol):
    backend: Literal["redis", "memory"]

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """Values in key order, None for a missing key. May raise CacheUnavailable."""
        ...

    async def set_many(self, entries: Sequence[tuple[str, bytes]]) -> None:
        """Store all entries with the cache's TTL in one round trip. May raise CacheUnavailable."""
        ...

    async def ping(self) -> bool: ...

    def status(self) -> CacheStatus:
        """ "skipped" while Redis is not being asked after failures; else "ok"."""
        ...

    async def close(self) -> None: ...


class LruCache:
    """Bounded in-process cache (one per process, lost on restart)."""

    backend: Literal["redis", "memory"] = "memory"

    def __init__(self, max_items: int, ttl_seconds: int) -> None:
        self._max_items = max_items
        self._ttl = ttl_seconds
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        now = time.monotonic()
        values: list[bytes | None] = []
        for key in keys:
            entry = self._entries.get(key)
            if entry is None or entry[0] < now:
                values.append(None)
                continue
            self._entries.move_to_end(key)
            values.append(entry[1])
        return values

    async def set_many(self, entries: Sequence[tuple[str, bytes]]) -> None:
        expires = time.monotonic() + self._ttl if self._ttl else float("inf")
        for key, value in entries:
            self._entries[key] = (expires, value)
            self._entries.move_to_end(key)
        while len(self._entries) > self._max_items:
            self._entries.popitem(last=False)

    async def ping(self) -> bool:
        return True

    def status(self) -> CacheStatus:
        return "ok"

    async def close(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


class Breaker:
    """When to skip Redis (see the module docstring). Single-threaded: used from the event loop only."""

    def __init__(self, *, retry_seconds: float, timeouts_to_open: int) -> None:
        self._retry_seconds = retry_seconds
        self._timeouts_to_open = timeouts_to_open
        self.open = False
        self._skip_until = 0.0
        self._probing = False
        self._timeout_streak = 0  # consecutive timeouts (one per stall) since the last success
        self._last_timeout_at = -float("inf")

    def admit(self) -> bool:
        """Whether the caller may ask Redis now and is the probe (True) or a normal call (False).
        Raises CacheSkipped while the breaker is open, outside the one probe."""
        if not self.open:
            return False
        if self._probing or time.monotonic() < self._skip_until:
            raise CacheSkipped("redis is skipped after failures; served without the cache")
        self._probing = True
        return True

    def end_probe(self) -> None:
        self._probing = False

    def answered(self) -> None:
        """Redis answered (a result or a command error): it is reachable."""
        self._timeout_streak = 0
        if self.open:
            log.info("redis reachable again")
            self.open = False

    def timed_out(self, started: float, probe: bool) -> None:
        # Calls that were in flight when the previous timeout fired belong to the same stall.
        if started >= self._last_timeout_at:
            self._timeout_streak += 1
        self._last_timeout_at = time.monotonic()
        if probe or self._timeout_streak >= self._timeouts_to_open:
            self.trip(f"{self._timeout_streak} consecutive timeouts")

    def trip(self, reason: str) -> None:
        if not self.open:
            log.warning(
                "redis unavailable (%s); serving from the model, one probe every %.1f s",
                reason,
                self._retry_seconds,
            )
        self.open = True
        self._skip_until = time.monotonic() + self._retry_seconds


class RedisCache:
    """Redis or Redis Cluster through `redis.asyncio` (a bounded connection pool, no client-side
    retries: the request falls back to the model instead of waiting)."""

    backend: Literal["redis", "memory"] = "redis"

    def __init__(
        self,
        url: str,
        *,
        ttl_seconds: int,
        timeout_seconds: float,
        retry_seconds: float,
        timeouts_to_open: int = 3,
        cluster: bool = False,
        max_connections: int = 64,
    ) -> None:
        url, cluster = resolve_cluster_url(url, cluster)
        self.cluster = cluster
        self._ttl = ttl_seconds
        self._timeout = timeout_seconds
        self._breaker = Breaker(retry_seconds=retry_seconds, timeouts_to_open=timeouts_to_open)
        # The queue for connections: a caller holds one of these while it uses Redis, so the pool
        # below is never asked for more than it has (redis-py would raise "Too many connections").
        self._connections = asyncio.Semaphore(max_connections)
        options = {
            # No socket timeout: every call already runs under `asyncio.timeout` in `_guarded`, and
            # redis-py implements socket_timeout with an extra task per command (asyncio.wait_for).
            # A call cancelled by the timeout closes its connection, so no reply is ever misread.
            "socket_timeout": None,
            "socket_connect_timeout": timeout_seconds,
            "retry": Retry(NoBackoff(), 0),
            "max_connections": max_connections,
        }
        self._client: Redis | RedisCluster
        if cluster:
            self._client = RedisCluster.from_url(url, **options)
        else:
            # The pool is used for its URL parsing and connection class (TLS or not) only: checking a
            # connection out of redis-py's pool (a condition, a lock, a timer, telemetry, a read to
            # check the socket) costs more than the command; `_checkout` keeps its own idle list.
            pool = BlockingConnectionPool.from_url(url, timeout=None, **options)
            self._client = Redis.from_pool(pool)
            self._new_connection = lambda: pool.connection_class(**pool.connection_kwargs)
            self._idle: list[AbstractConnection] = []

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        if isinstance(self._client, RedisCluster):
            # Keys hash to different slots; the client splits the MGET per node.
            client = self._client
            return await self._guarded(lambda: client.mget_nonatomic(list(keys)))
        values: list[bytes | None] = await self._guarded(lambda: self._command("MGET", *keys))
        return values

    async def set_many(self, entries: Sequence[tuple[str, bytes]]) -> None:
        if not entries:
            return
        if isinstance(self._client, RedisCluster):
            # Keys hash to different slots (a script may only touch one): a pipeline, split per node.
            cluster = self._client

            async def pipelined() -> None:
                async with cluster.pipeline(transaction=False) as pipe:
                    for key, value in entries:
                        pipe.set(key, value, ex=self._ttl or None)
                    await pipe.execute()

            await self._guarded(pipelined)
            return
        # One command per WRITE_CHUNK entries: a pipeline costs the client a command object, packing
        # and a reply to parse per key; the script takes all keys and values as one command.
        for start in range(0, len(entries), WRITE_CHUNK):
            chunk = entries[start : start + WRITE_CHUNK]
            args = (len(chunk), *(key for key, _ in chunk), self._ttl, *(value for _, value in chunk))
            await self._guarded(lambda args=args: self._script(SET_MANY_SHA, SET_MANY_SCRIPT, *args))

    async def _command(self, *args: str | bytes | int) -> Any:
        """One command on a pooled connection, packed by hiredis in one call (redis-py's
        execute_command encodes each argument in Python and records telemetry per command: for an
        MGET of 64 keys most of the cost of the round trip). A command that did not finish - an
        error, a timeout, a cancellation - closes its connection, so no reply is ever misread; a lost
        connection closes the idle ones too."""
        connection = self._idle.pop() if self._idle else self._new_connection()
        try:
            await connection.send_packed_command(hiredis.pack_command(args), check_health=False)
            reply = await connection.read_response()
        except BaseException as exc:
            await connection.disconnect()  # reconnects on its next command
            if isinstance(exc, RedisConnectionError | OSError):
                # The server went away or restarted: every idle connection to it is dead as well. Dropped
                # now, they cannot fail one later call each (each tripping the breaker again).
                stale, self._idle = self._idle, []
                for idle in stale:
                    await idle.disconnect()
            raise
        finally:
            # At most max_connections are out at once (the semaphore in `_guarded`), so at most as many idle.
            self._idle.append(connection)
        return reply

    async def _script(self, sha: str, script: str, *args: str | bytes | int) -> Any:
        """EVALSHA, loading the script first when this Redis does not have it (a restart, a flush)."""
        try:
            return await self._command("EVALSHA", sha, *args)
        except NoScriptError:
            await self._command("SCRIPT", "LOAD", script)
            return await self._command("EVALSHA", sha, *args)

    async def ping(self) -> bool:
        try:
            await self._guarded(self._client.ping if self.cluster else lambda: self._command("PING"))
        except CacheUnavailable:
            return False
        return True

    def status(self) -> CacheStatus:
        return "skipped" if self._breaker.open else "ok"

    async def close(self) -> None:
        if not self.cluster:
            for connection in self._idle:
                await connection.disconnect()
            self._idle.clear()
        await self._client.aclose()

    async def _guarded(self, operation: Callable[[], Awaitable[T]]) -> T:
        probe = self._breaker.admit()
        started: float | None = None  # when this call got its connection
        try:
            async with asyncio.timeout(self._timeout):
                async with self._connections:
                    started = time.monotonic()
                    result = await operation()
        except (RedisTimeoutError, TimeoutError) as exc:
            if started is None:
                raise CacheBusy(f"no redis connection free within {self._timeout * 1000:.0f} ms") from exc
            self._breaker.timed_out(started, probe)
            raise CacheTimeout(f"redis call timed out after {self._timeout * 1000:.0f} ms") from exc
        except (RedisConnectionError, OSError) as exc:
            # The server is gone (refused, reset, unknown host): open at once, don't wait per request.
            self._breaker.trip(f"{type(exc).__name__}: {exc}")
            raise CacheDisconnected(f"{type(exc).__name__}: {exc}") from exc
        except RedisError as exc:
            # Command-level errors (OOM, wrong type, ...) come from a server that answers.
            self._breaker.answered()
            raise CacheUnavailable(f"{type(exc).__name__}: {exc}") from exc
        finally:
            if probe:
                self._breaker.end_probe()
        self._breaker.answered()
        return result


def build_cache(
    redis_url: str,
    *,
    cluster: bool,
    ttl_seconds: int,
    timeout_seconds: float,
    retry_seconds: float,
    timeouts_to_open: int,
    max_connections: int,
    lru_max_items: int,
) -> Cache:
    """Redis when a URL is given, else the in-process LRU."""
    if not redis_url:
        return LruCache(lru_max_items, ttl_seconds)
    return RedisCache(
        redis_url,
        ttl_seconds=ttl_seconds,
        timeout_seconds=timeout_seconds,
        retry_seconds=retry_seconds,
        timeouts_to_open=timeouts_to_open,
        cluster=cluster,
        max_connections=max_connections,
    )
