"""Memory per served model: `marc serve` started with 1, 2, ... N copies of one artifact under
MARC_ARTIFACTS (each copy its own session, batcher and worker thread, as N different models of that
size would be), each model warmed up with one request, then the process's resident set size (VmRSS)
read. Then reloads: one model swapped ``--reloads`` times for a copy of itself (a directory of
links to the same files, so it loads again) with `POST /admin/reload`, the RSS read after each and
the peak (VmHWM) at the end.

    python -m loadtest.model_memory --artifact artifacts/default --copies 3 --reloads 3

Prints a markdown table; ``--json`` also writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from loadtest.processes import HOST, ServerProcess, environment_without_settings

WARM_ITEMS = 32
MB = 1024 * 1024


@dataclass(frozen=True)
class MemoryRow:
    models: int
    rss_mb: float
    added_mb: float | None  # RSS over the row before (None for the first)


@dataclass(frozen=True)
class ReloadMemory:
    rss_before_mb: float
    peak_before_mb: float  # VmHWM before the first reload: loading at start-up
    peak_mb: float  # VmHWM at the end: the old and the new model loaded side by side
    rss_after_mb: list[float]  # after each reload
    seconds: list[float]  # each reload's answer time


def proc_status_mb(pid: int, field: str) -> float:
    """A /proc/<pid>/status memory field (VmRSS, VmHWM) in MiB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024 / MB
    raise RuntimeError(f"no {field} for pid {pid}")


def linked_copy(artifact: Path, directory: Path) -> Path:
    """``directory`` holding a link to each file of ``artifact``: another artifact directory (so a
    reload loads it as a new model) without copying hundreds of megabytes."""
    directory.mkdir(parents=True)
    for file in artifact.resolve().iterdir():
        (directory / file.name).symlink_to(file)
    return directory


def _serve(models: dict[str, Path], log: Path, key: str, variant: str) -> ServerProcess:
    env = {
        **environment_without_settings(),
        "MARC_HOST": HOST,
        "MARC_LOG_LEVEL": "warning",
        "MARC_ARTIFACTS": ",".join(f"{name}={path}" for name, path in models.items()),
        "MARC_API_KEY": key,
        "MARC_VARIANT": variant,
    }
    server = ServerProcess(
        "marc serve", ["marc_serve", "serve"], log_path=log, ready_path="/readyz", env=env, start_timeout=900
    )
    return server.start()


def _warm(server: ServerProcess, names: list[str], key: str, phase: int = 0) -> None:
    """One request of new texts per model (never cache hits: a copy of an artifact has its
    fingerprint): ONNX Runtime allocates its arena on the first runs."""
    with httpx.Client(base_url=server.url, timeout=300, headers={"Authorization": f"Bearer {key}"}) as client:
        for name in names:
            items = [
                {"text": f"memory probe {phase}-{name}-{i}: a linen summer dress, size {i % 5}"}
                for i in range(WARM_ITEMS)
            ]
            response = client.post("/v1/embed", json={"items": items, "model": name})
            response.raise_for_status()
            if any(item["cached"] for item in response.json()["data"]):
                raise RuntimeError("the warm-up texts were cached: the model did not run")


def measure(
    artifact: Path, copies: int, variant: str, settle_seconds: float, reloads: int = 3
) -> tuple[list[MemoryRow], ReloadMemory]:
    rows: list[MemoryRow] = []
    key = secrets.token_hex(8)
    with tempfile.TemporaryDirectory(prefix="marc-memory-") as scratch:
        work = Path(scratch)
        for count in range(1, copies + 1):
            names = [f"m{index}" for index in range(1, count + 1)]
            server = _serve(dict.fromkeys(names, artifact), work / f"serve-{count}.log", key, variant)
            try:
                _warm(server, names, key)
                time.sleep(settle_seconds)
                rss = proc_status_mb(server.pid, "VmRSS")
            finally:
                server.stop()
            added = rss - rows[-1].rss_mb if rows else None
            rows.append(MemoryRow(count, rss, added))
            print(f"{count} model(s): RSS {rss:.0f} MiB", file=sys.stderr)

        current = work / "current"
        current.symlink_to(artifact.resolve())
        copies_of = [linked_copy(artifact, work / "copy-a"), linked_copy(artifact, work / "copy-b")]
        server = _serve({"m1": current}, work / "serve-reload.log", key, variant)
        try:
            _warm(server, ["m1"], key)
            time.sleep(settle_seconds)
            before = proc_status_mb(server.pid, "VmRSS")
            peak_before = proc_status_mb(server.pid, "VmHWM")
            after: list[float] = []
            seconds: list[float] = []
            for index in range(reloads):
                current.unlink()
                current.symlink_to(copies_of[index % 2])
                started = time.perf_counter()
                answer = httpx.post(
                    f"{server.url}/admin/reload", headers={"Authorization": f"Bearer {key}"}, timeout=900
                )
                answer.raise_for_status()
                seconds.append(time.perf_counter() - started)
                if answer.json()["status"] != "reloaded":
                    raise RuntimeError(f"the reload changed nothing: {answer.text}")
                _warm(server, ["m1"], key, phase=index + 1)
                time.sleep(settle_seconds)
                after.append(proc_status_mb(server.pid, "VmRSS"))
                print(f"reload {index + 1}: RSS {after[-1]:.0f} MiB", file=sys.stderr)
            reload = ReloadMemory(before, peak_before, proc_status_mb(server.pid, "VmHWM"), after, seconds)
        finally:
            server.stop()
    return rows, reload


def markdown(artifact: Path, rows: list[MemoryRow], reload: ReloadMemory) -> str:
    lines = [
        f"`marc serve` RSS with N copies of `{artifact}` under MARC_ARTIFACTS"
        " (each warmed with one request):",
        "",
        "| models | RSS (MiB) | added by this model (MiB) |",
        "|---|---|---|",
    ]
    for row in rows:
        added = "-" if row.added_mb is None else f"{row.added_mb:.0f}"
        lines.append(f"| {row.models} | {row.rss_mb:.0f} | {added} |")
    after = ", ".join(f"{mb:.0f}" for mb in reload.rss_after_mb)
    took = ", ".join(f"{seconds:.1f}" for seconds in reload.seconds)
    lines += [
        "",
        f"{len(reload.rss_after_mb)} reloads of 1 model (each swapped for a copy of itself by POST "
        f"/admin/reload, {took} s): RSS {reload.rss_before_mb:.0f} MiB before (peak at start-up "
        f"{reload.peak_before_mb:.0f} MiB), {after} MiB after each; peak {reload.peak_mb:.0f} MiB.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.model_memory", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--artifact", type=Path, default=Path("artifacts/default"), help="artifact (%(default)s)"
    )
    parser.add_argument("--copies", type=int, default=3, help="up to this many models (%(default)s)")
    parser.add_argument("--reloads", type=int, default=3, help="reloads of one model (%(default)s)")
    parser.add_argument("--variant", default="auto", help="MARC_VARIANT of the served copies (%(default)s)")
    parser.add_argument(
        "--settle-seconds", type=float, default=2.0, help="wait before reading RSS (%(default)s)"
    )
    parser.add_argument("--json", type=Path, help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)
    if not (args.artifact / "manifest.json").is_file():
        parser.error(f"{args.artifact}: no manifest.json (build one with `make artifact`)")
    rows, reload = measure(args.artifact, args.copies, args.variant, args.settle_seconds, args.reloads)
    print(markdown(args.artifact, rows, reload))
    if args.json:
        report = {"artifact": str(args.artifact), "rows": [asdict(r) for r in rows], "reload": asdict(reload)}
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
