"""Locust scenarios for the MARC embedding service: the real traffic mixes.

User classes (pick some on the command line, e.g. `locust -f loadtest/locustfile.py HotUser`; all run
by default, weighted as below):
  ColdUser    POST /v1/embed with texts never seen before (every item a cache miss: the model path)
  HotUser     POST /v1/embed with texts from a pool warmed at test start, plus a share of fresh ones
              (MARC_LT_HIT_RATIO sets the expected cache hit ratio)
  LookupUser  POST /v1/items/lookup with ids stored at test start (no inference on this path)
  OpenAIUser  POST /v1/embeddings, OpenAI style (input list, base64 like the openai SDK)

Environment variables:
  MARC_LT_ITEMS        items (texts, ids or inputs) per request            default 1
  MARC_LT_POOL_SIZE    texts/ids in the hot pool, warmed at test start     default 1000
  MARC_LT_HIT_RATIO    share of HotUser items taken from the pool (0..1)   default 0.9
  MARC_LT_ENCODING     float | base64 | base64_fp16 for /v1/embed, lookup  default float
  MARC_LT_API_KEY      bearer token, when the service sets MARC_API_KEY    default none
  MARC_LT_WAIT         seconds each user waits between requests            default 0 (closed loop)

Besides the request stats, each answer's `x-queue-time-ms` and `x-inference-time-ms` headers are
recorded as their own entries (type "timing": "queue_ms <route>", "inference_ms <route>"; their
"response time" column is the header's value), so the charts and the CSV show where time went.

Run (service on :8000):
  locust -f loadtest/locustfile.py --host http://127.0.0.1:8000                   # web UI on :8089
  locust -f loadtest/locustfile.py --headless -u 20 -r 5 -t 30s --host http://127.0.0.1:8000
"""

from __future__ import annotations

import itertools
import os
import random
import time
import uuid
from typing import Any

import httpx
from locust import between, constant, events, task
from locust.contrib.fasthttp import FastHttpUser
from locust.env import Environment

from loadtest.texts import item_text

ITEMS = int(os.environ.get("MARC_LT_ITEMS", "1"))
POOL_SIZE = int(os.environ.get("MARC_LT_POOL_SIZE", "1000"))
HIT_RATIO = float(os.environ.get("MARC_LT_HIT_RATIO", "0.9"))
ENCODING = os.environ.get("MARC_LT_ENCODING", "float")
API_KEY = os.environ.get("MARC_LT_API_KEY", "")
WAIT = float(os.environ.get("MARC_LT_WAIT", "0"))

POOL_START = 10_000_000  # the hot pool's text indices (same ranges as the headless benchmark)
ID_PREFIX = "loadtest-item-"
WARM_CHUNK = 64
# Fresh texts: a per-process random base far from the pool, so repeated runs never hit old entries.
_fresh_indices = itertools.count(random.Random(uuid.uuid4().int).randrange(10**9, 10**12, 10**6))
HEADERS = {"content-type": "application/json", **({"authorization": f"Bearer {API_KEY}"} if API_KEY else {})}
TIMING_HEADERS = {"x-queue-time-ms": "queue_ms", "x-inference-time-ms": "inference_ms"}


def fresh_text() -> str:
    return item_text(next(_fresh_indices))


def pool_text() -> str:
    return item_text(POOL_START + random.randrange(POOL_SIZE))


@events.init_command_line_parser.add_listener
def _check_settings(**_: Any) -> None:
    if ITEMS < 1 or POOL_SIZE < 1 or not 0 <= HIT_RATIO <= 1:
        raise SystemExit("MARC_LT_ITEMS and MARC_LT_POOL_SIZE must be >= 1, MARC_LT_HIT_RATIO in 0..1")


@events.test_start.add_listener
def warm_pool(environment: Environment, **_: Any) -> None:
    """Store every pool text under the id `loadtest-item-<n>`: this fills the text cache for HotUser
    and the id key space for LookupUser. Only where users run (not on a distributed master)."""
    if environment.host is None or type(environment.runner).__name__ == "MasterRunner":
        return
    began = time.perf_counter()
    with httpx.Client(base_url=environment.host, headers=HEADERS, timeout=120) as client:
        for start in range(0, POOL_SIZE, WARM_CHUNK):
            items = [
                {"id": f"{ID_PREFIX}{n}", "text": item_text(POOL_START + n)}
                for n in range(start, min(start + WARM_CHUNK, POOL_SIZE))
            ]
            client.post("/v1/embed", json={"items": items}).raise_for_status()
    print(f"warmed {POOL_SIZE} pool items in {time.perf_counter() - began:.1f} s")


class _ServiceUser(FastHttpUser):
    abstract = True
    wait_time = constant(WAIT) if WAIT == 0 else between(WAIT / 2, WAIT * 1.5)

    def post(self, route: str, body: dict[str, Any]) -> None:
        with self.client.post(route, json=body, headers=HEADERS, catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {(response.text or '')[:200]}")
                return
            for header, metric in TIMING_HEADERS.items():
                value = response.headers.get(header)
                if value is not None:
                    events.request.fire(
                        request_type="timing",
                        name=f"{metric} {route}",
                        response_time=float(value),
                        response_length=0,
                        exception=None,
                        context={},
                    )


class ColdUser(_ServiceUser):
    weight = 1

    @task
    def embed_new_texts(self) -> None:
        self.post(
            "/v1/embed", {"items": [{"text": fresh_text()} for _ in range(ITEMS)], "encoding": ENCODING}
        )


class HotUser(_ServiceUser):
    weight = 4

    @task
    def embed_known_texts(self) -> None:
        texts = [pool_text() if random.random() < HIT_RATIO else fresh_text() for _ in range(ITEMS)]
        self.post("/v1/embed", {"items": [{"text": t} for t in texts], "encoding": ENCODING})


class LookupUser(_ServiceUser):
    weight = 2

    @task
    def lookup_ids(self) -> None:
        ids = [f"{ID_PREFIX}{random.randrange(POOL_SIZE)}" for _ in range(ITEMS)]
        self.post("/v1/items/lookup", {"ids": ids, "encoding": ENCODING})


class OpenAIUser(_ServiceUser):
    weight = 1

    @task
    def openai_embeddings(self) -> None:
        texts = [pool_text() if random.random() < HIT_RATIO else fresh_text() for _ in range(ITEMS)]
        self.post("/v1/embeddings", {"input": texts, "model": "marc", "encoding_format": "base64"})
