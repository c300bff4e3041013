"""The request-path profile's grouping (hot and cold): each sampled stack counts once, in its
innermost known part."""

from __future__ import annotations

import pytest

from loadtest.profile_path import group_of, shares

LOOP = "Runner.run (asyncio/runners.py:118)"
CYCLE = "RequestResponseCycle.run_asgi (uvicorn/protocols/http/httptools_impl.py:401)"
METRICS = "RequestMetricsMiddleware.__call__ (service/api/middleware.py:48)"
EMBED = "embed (service/api/embed.py:97)"


@pytest.mark.parametrize(
    ("leaf", "group"),
    [
        (
            "Admission._parse (service/api/admission.py:180)",
            "service: admission (auth, shape scan, one parse)",
        ),
        ("EmbedFlow.embed (service/flow.py:134)", "service: the embed flow"),
        ("ValueCodec.decode (service/cache/values.py:80)", "service: cache values (encode, decode)"),
        ("KeySpace.text_key (service/cache/keys.py:45)", "service: cache keys, near-cache, confirmed ids"),
        (
            "ConfirmedIds.points_at (service/cache/confirmed.py:50)",
            "service: cache keys, near-cache, confirmed ids",
        ),
        ("BatchedCache.get_many (service/cache/batched.py:70)", "service: Redis reads and writes (client)"),
        ("ModelRegistry.lease (service/registry.py:90)", "service: routing and the rest of the handler"),
        ("embed_body (service/api/responses.py:79)", "service: response body and headers"),
        ("MutexValue.inc (prometheus_client/values.py:29)", "service: metrics (middleware, counters)"),
        (
            "RequestResponseCycle.send (uvicorn/protocols/http/httptools_impl.py:524)",
            "HTTP: response writes (uvicorn send)",
        ),
        ("OnnxEncoder._run (service/model/encoder.py:131)", "model: ONNX Runtime runs"),
        ("OnnxEncoder._pad (service/model/encoder.py:120)", "model: tokenise and pad"),
        ("Redis.execute_command (redis/asyncio/client.py:600)", "service: Redis reads and writes (client)"),
    ],
)
def test_a_sample_counts_in_its_innermost_known_part(leaf: str, group: str) -> None:
    assert group_of([LOOP, CYCLE, METRICS, EMBED, leaf]) == group


def test_pydantic_under_admission_counts_as_admission_and_the_loop_alone_as_the_loop() -> None:
    parse = "Admission._parse (service/api/admission.py:180)"
    pydantic = "BaseModel.model_validate_json (pydantic/main.py:847)"
    assert group_of([LOOP, CYCLE, METRICS, EMBED, parse, pydantic]).startswith("service: admission")
    assert group_of([LOOP]) == "event loop, sockets, native code (uvloop)"
    assert group_of(["main (somewhere/else.py:1)"]) == "other"


def test_shares_add_up_and_weigh_by_sample_count() -> None:
    raw = "\n".join(
        [
            f"{LOOP} 30",
            f"{LOOP};{CYCLE};{METRICS};{EMBED};EmbedFlow.embed (service/flow.py:134) 10",
            f"{LOOP};{CYCLE} 60",
            "garbage line",
        ]
    )
    result = shares(raw)
    assert result == pytest.approx(
        {
            "HTTP: request parsing (uvicorn/httptools)": 0.6,
            "event loop, sockets, native code (uvloop)": 0.3,
            "service: the embed flow": 0.1,
        }
    )


def test_a_pool_thread_waiting_for_work_takes_no_share_but_its_hand_offs_do() -> None:
    boot = "Thread._bootstrap_inner (threading.py:1045)"
    worker = "_worker (concurrent/futures/thread.py:89)"
    submit = "ThreadPoolExecutor.submit (concurrent/futures/thread.py:176)"
    raw = "\n".join([f"{boot};{worker} 70", f"{boot};{worker};{submit} 10", f"{LOOP} 30"])
    assert shares(raw) == pytest.approx(
        {"event loop, sockets, native code (uvloop)": 0.75, "thread pools (hand-offs)": 0.25}
    )
