"""Where a request's CPU goes: py-spy samples `marc serve` under a closed loop of 32 single-item
clients and groups the samples (every thread's) by the part of the request path they fall in, with
the server's CPU per request. ``--path hot`` (all hits, as `marc bench` row 2) profiles the bare
endpoint under the same load beside it; ``--path cold`` (fresh texts, as row 1 or 1c) the service
alone, model runs and tokenising included.

    python -m loadtest.profile_path --artifact artifacts/default [--path hot|cold] [--length long|short]
        [--route /v1/embed] [--seconds 8]

Needs py-spy (the dev extra) and permission to attach to a child process (root, or
``kernel.yama.ptrace_scope`` 0). The groups are matched innermost-first on the sampled stacks, so a
sample counts once, in the most specific part it is in.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from artifact.manifest import read_manifest
from artifact.names import ArtifactError
from loadtest.bench import COLD_START, POOL_START
from loadtest.loadgen import Workload
from loadtest.near_free import near_free_artifact
from loadtest.phases import bare_endpoint, closed_loop, warm_pool
from loadtest.processes import RedisServer, ServerProcess, marc_serve
from loadtest.texts import TEXT_LENGTHS

# (group, function-name prefix or "", path fragment) - the first rule a frame matches, innermost
# frame first, names the sample's group.
RULES: tuple[tuple[str, str, str], ...] = (
    ("service: admission (auth, shape scan, one parse)", "Admission.", "service/api/admission.py"),
    ("service: cache keys, near-cache, confirmed ids", "", "service/cache/keys.py"),
    ("service: cache keys, near-cache, confirmed ids", "", "service/cache/near.py"),
    ("service: cache keys, near-cache, confirmed ids", "", "service/cache/confirmed.py"),
    ("service: cache keys, near-cache, confirmed ids", "", "service/cache/bounded.py"),
    ("service: cache values (encode, decode)", "", "service/cache/values.py"),
    ("service: Redis reads and writes (client)", "", "service/cache/batched.py"),
    ("service: Redis reads and writes (client)", "", "service/cache/stores.py"),
    ("service: the embed flow", "EmbedFlow.", "service/flow.py"),
    ("model: ONNX Runtime runs", "OnnxEncoder._run", "service/model/encoder.py"),
    ("model: tokenise and pad", "", "service/model/encoder.py"),
    ("service: micro-batcher", "", "service/model/batcher.py"),
    ("service: Redis reads and writes (client)", "", "redis/"),
    ("service: response body and headers", "", "service/api/responses.py"),
    ("service: metrics (middleware, counters)", "", "prometheus_client/"),
    (
        "service: metrics (middleware, counters)",
        "RequestMetricsMiddleware.__call__",
        "service/api/middleware.py",
    ),
    ("HTTP: response writes (uvicorn send)", "RequestResponseCycle.send", "uvicorn/protocols/http/"),
    ("HTTP: request parsing (uvicorn/httptools)", "", "uvicorn/protocols/http/"),
    ("framework: FastAPI/Starlette (bare endpoint)", "", "starlette/"),
    ("framework: FastAPI/Starlette (bare endpoint)", "", "fastapi/"),
    ("service: routing and the rest of the handler", "", "service/"),
    ("event loop, sockets, native code (uvloop)", "Runner.run", "asyncio/runners.py"),
    ("thread pools (hand-offs)", "", "concurrent/futures/thread.py"),
)


def group_of(stack: list[str]) -> str:
    for frame in reversed(stack):
        name, _, where = frame.partition(" (")
        for group, prefix, fragment in RULES:
            if fragment in where and name.startswith(prefix):
                return group
    return "other"


def waits_for_work(stack: list[str]) -> bool:
    """A pool thread blocked in its queue's get: sampled by the non-blocking py-spy as if it ran, but it
    uses no CPU (it was 27% of the samples of a 32-item cold profile), so it must not take a share."""
    name, _, where = stack[-1].partition(" (")
    return name == "_worker" and "concurrent/futures/thread.py" in where


def shares(raw_profile: str) -> dict[str, float]:
    """Share of the busy samples per group from py-spy's ``--format raw`` output."""
    counts: collections.Counter[str] = collections.Counter()
    for line in raw_profile.splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if stack and count.isdigit() and not waits_for_work(frames):
            counts[group_of(frames)] += int(count)
    total = sum(counts.values()) or 1
    return {group: count / total for group, count in counts.most_common()}


def py_spy() -> str:
    """py-spy beside this Python (the venv's bin/, also when the venv is not on PATH), else on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.is_file() else shutil.which("py-spy") or "py-spy"


def _profile(
    server: ServerProcess, workload: Workload, seconds: float, out: Path
) -> tuple[float, float, str]:
    """(req/s, server CPU us/request, raw py-spy profile) of one closed-loop phase."""
    spy = subprocess.Popen(
        [
            py_spy(),
            "record",
            "-p",
            str(server.pid),
            "-d",
            str(int(seconds)),
            "-r",
            "400",
            "-f",
            "raw",
            "-o",
            str(out),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    result = closed_loop(server, workload, seconds=seconds, concurrency=32, warmup=128)
    cpu_us = result.server_cpu_ms_per_request * 1000
    if spy.wait(timeout=seconds + 30) != 0 or not out.is_file():
        raise RuntimeError(
            "py-spy could not record (is it installed, and may this user attach to a process?)"
        )
    return result.requests_per_second, cpu_us, out.read_text()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.profile_path", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--artifact", type=Path, default=Path("artifacts/default"))
    parser.add_argument("--path", choices=["hot", "cold"], default="hot", help="(%(default)s)")
    parser.add_argument("--length", choices=TEXT_LENGTHS, default="long", help="cold texts (%(default)s)")
    parser.add_argument("--route", choices=["/v1/embed", "/v1/embeddings"], default="/v1/embed")
    parser.add_argument("--items", type=int, default=1, help="items per request (%(default)s)")
    parser.add_argument("--ids", action="store_true", help="every /v1/embed item carries an id, sku-N")
    parser.add_argument(
        "--near-free",
        action="store_true",
        help="profile the artifact's near-free twin (loadtest.near_free): the service's own work alone",
    )
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--cache-dir", type=Path, default=Path(".cache/bench"), help="(%(default)s)")
    args = parser.parse_args(argv)
    try:
        read_manifest(args.artifact)
    except ArtifactError as exc:
        parser.error(str(exc))
    artifact = args.artifact
    if args.near_free:
        args.cache_dir.mkdir(parents=True, exist_ok=True)
        artifact = near_free_artifact(args.artifact, args.cache_dir)
    pool = 512
    shape = {"route": args.route, "items_per_request": args.items, "ids": args.ids}
    workload = Workload(kind="pool", start=POOL_START, pool_size=pool, **shape)
    if args.path == "cold":
        workload = Workload(kind="unique", start=COLD_START, text_length=args.length, **shape)
    with tempfile.TemporaryDirectory() as scratch_dir, RedisServer() as redis:
        scratch = Path(scratch_dir)
        service = marc_serve("marc serve", artifact, redis.url, scratch / "serve.log")
        with service:
            if args.path == "cold":
                measured = {"marc serve": _profile(service, workload, args.seconds, scratch / "service.txt")}
                _print(measured, f"Fresh ({args.length}) texts on {args.route}, {_shape(args)}", args.seconds)
                return 0
            warm_pool(service.url, POOL_START, pool, ids=args.ids)
            with bare_endpoint(service.url, workload, scratch) as bare:
                # It answers on /v1/embed whatever the route: the same bytes as the service's answer.
                bare_workload = Workload(
                    kind="pool", start=POOL_START, pool_size=pool, **{**shape, "route": "/v1/embed"}
                )
                measured = {
                    "marc serve": _profile(service, workload, args.seconds, scratch / "service.txt"),
                    "bare endpoint": _profile(bare, bare_workload, args.seconds, scratch / "bare.txt"),
                }
    _print(measured, f"All-hits {args.route}, {_shape(args)}", args.seconds)
    return 0


def _shape(args: argparse.Namespace) -> str:
    ids = " with ids" if args.ids and args.route == "/v1/embed" else ""
    twin = ", near-free twin" if args.near_free else ""
    return f"{args.items} item(s)/request{ids}{twin}"


def _print(measured: dict[str, tuple[float, float, str]], what: str, seconds: float) -> None:
    groups = {name: shares(profile) for name, (_, _, profile) in measured.items()}
    names = list(measured)
    print(f"{what}, 32 clients, {seconds:g} s each, sampled by py-spy (all threads)\n")
    print("| part of the request path | " + " | ".join(names) + " |")
    print("| --- | " + " | ".join("---:" for _ in names) + " |")
    rows = dict.fromkeys(group for g in groups.values() for group in g)
    for group in rows:
        cells = []
        for name in names:
            share = groups[name].get(group, 0.0)
            cells.append(f"{share * 100:.1f}% ({share * measured[name][1]:.0f} us)")
        print(f"| {group} | " + " | ".join(cells) + " |")
    print(
        "| **req/s; server CPU per request** | "
        + " | ".join(f"{measured[name][0]:.0f}; {measured[name][1]:.0f} us" for name in names)
        + " |"
    )


if __name__ == "__main__":
    sys.exit(main())
