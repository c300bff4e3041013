"""Cache housekeeping for operators: what each model fingerprint holds in Redis, and removing one
fingerprint's keys once no replica serves it any more.

Both walk the key space with SCAN (never KEYS, which blocks the server for the whole key space) in
pages of ``page_keys``, and only ever touch keys under ``<prefix>:``; a purge removes only keys of
the service's vector layout (`service.cache.keys`). Sizes come from MEMORY USAGE (what Redis really spends
on a key, the figure `maxmemory` counts); deletion is UNLINK (the memory is reclaimed in a background
thread), one round trip per page. Every command is short, so a live service sharing the server keeps
its latency. On a Redis Cluster every primary is scanned and each page is pipelined per node.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import islice

from pydantic_settings import BaseSettings, SettingsConfigDict
from redis import Redis, RedisCluster

from service.cache.keys import FINGERPRINT_CHARS, HEX_DIGITS, ID_KIND, parse_key
from service.cache.stores import resolve_cluster_url
from service.settings import Settings

PAGE_KEYS = 1000
"""Keys asked of SCAN per call (its COUNT hint) and deleted per UNLINK round trip."""
GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")


class CacheTarget(BaseSettings):
    """Which cache to work on: the service's own settings (same MARC_* names, defaults and checks)."""

    model_config = SettingsConfigDict(env_prefix="MARC_", extra="ignore", frozen=True)

    redis_url: str = Settings.model_fields["redis_url"]
    redis_cluster: bool = Settings.model_fields["redis_cluster"]
    cache_prefix: str = Settings.model_fields["cache_prefix"]


@dataclass
class FingerprintUsage:
    fingerprint: str
    """First FINGERPRINT_CHARS characters of the model fingerprint (what the keys carry)."""
    value_dtype: str
    texts: int = 0
    """Vectors stored by text (one per distinct normalised text)."""
    ids: int = 0
    """Vectors stored by item id."""
    bytes: int = 0

    @property
    def keys(self) -> int:
        return self.texts + self.ids


@dataclass
class CacheUsage:
    prefix: str
    fingerprints: list[FingerprintUsage] = field(default_factory=list)
    other_keys: int = 0
    """Keys under ``<prefix>:`` that are not vector keys of the service (counted, never touched)."""
    other_bytes: int = 0
    nodes: int = 1

    def to_dict(self) -> dict[str, object]:
        rows = [{**vars(row), "keys": row.keys} for row in self.fingerprints]
        return {
            "prefix": self.prefix,
            "nodes": self.nodes,
            "fingerprints": rows,
            "other_keys": self.other_keys,
            "other_bytes": self.other_bytes,
        }


def connect(url: str, *, cluster: bool = False, timeout_seconds: float = 30.0) -> Redis | RedisCluster:
    """A synchronous client for ``url`` (``redis+cluster://`` or ``cluster=True``: Redis Cluster)."""
    url, cluster = resolve_cluster_url(url, cluster)
    options = {"socket_timeout": timeout_seconds, "socket_connect_timeout": timeout_seconds}
    return RedisCluster.from_url(url, **options) if cluster else Redis.from_url(url, **options)


def fingerprint_key_prefix(fingerprint: str) -> str:
    """The part of a fingerprint cache keys carry; refuses anything shorter (a short prefix would
    match several models)."""
    value = fingerprint.strip().lower()
    if len(value) < FINGERPRINT_CHARS or not set(value) <= HEX_DIGITS:
        raise ValueError(
            f"fingerprint: expected at least {FINGERPRINT_CHARS} hex characters (as `marc cache stats` "
            f"or /v1/models show it), got {fingerprint!r}"
        )
    return value[:FINGERPRINT_CHARS]


def _pages(client: Redis | RedisCluster, pattern: str, page_keys: int) -> Iterator[list[str]]:
    """SCAN MATCH ``pattern`` over every node, in pages of about ``page_keys`` keys."""
    keys = (key.decode() if isinstance(key, bytes) else key for key in _scan(client, pattern, page_keys))
    while page := list(islice(keys, page_keys)):
        yield page


def _scan(client: Redis | RedisCluster, pattern: str, page_keys: int) -> Iterator[bytes | str]:
    if isinstance(client, RedisCluster):
        # redis-py's cluster scan_iter walks every primary with its own cursor.
        yield from client.scan_iter(match=pattern, count=page_keys, target_nodes=RedisCluster.PRIMARIES)
    else:
        yield from client.scan_iter(match=pattern, count=page_keys)


def _glob_escape(text: str) -> str:
    return GLOB_SPECIAL.sub(r"\\\1", text)


def cache_usage(client: Redis | RedisCluster, prefix: str, *, page_keys: int = PAGE_KEYS) -> CacheUsage:
    """Keys and bytes per fingerprint and value type under ``<prefix>:``."""
    usage = CacheUsage(prefix)
    if isinstance(client, RedisCluster):
        usage.nodes = len(client.get_primaries())
    rows: dict[tuple[str, str], FingerprintUsage] = {}
    for page in _pages(client, f"{_glob_escape(prefix)}:*", page_keys):
        pipe = client.pipeline(transaction=False)
        for key in page:
            pipe.memory_usage(key)
        for key, size in zip(page, pipe.execute(), strict=True):
            if size is None:
                continue  # expired or deleted since SCAN returned it
            parts = parse_key(prefix, key)
            if parts is None:
                usage.other_keys += 1
                usage.other_bytes += size
                continue
            row = rows.setdefault(
                (parts.fingerprint, parts.value_dtype), FingerprintUsage(parts.fingerprint, parts.value_dtype)
            )
            if parts.kind == ID_KIND:
                row.ids += 1
            else:
                row.texts += 1
            row.bytes += size
    usage.fingerprints = sorted(rows.values(), key=lambda row: (-row.bytes, row.fingerprint))
    return usage


def purge_fingerprint(
    client: Redis | RedisCluster,
    prefix: str,
    fingerprint: str,
    *,
    page_keys: int = PAGE_KEYS,
    progress: Callable[[int], None] | None = None,
) -> int:
    """UNLINK every vector key of ``fingerprint`` (both value types) under ``<prefix>:``; returns how
    many keys were removed. ``progress(n)`` is called after each page with the keys it removed."""
    pattern = f"{_glob_escape(prefix)}:{fingerprint_key_prefix(fingerprint)}:*"
    removed = 0
    for found in _pages(client, pattern, page_keys):
        page = [key for key in found if parse_key(prefix, key) is not None]  # vector keys only
        if not page:
            continue
        if isinstance(client, RedisCluster):
            # A multi-key command may not cross hash slots: one UNLINK per key, pipelined per node.
            pipe = client.pipeline(transaction=False)
            for key in page:
                pipe.unlink(key)
            count = sum(pipe.execute())
        else:
            count = int(client.unlink(*page))
        removed += count
        if progress is not None:
            progress(count)
    return removed
