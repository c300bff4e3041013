"""`make first-vector`: the time from `make serve` on a fresh clone to the README quickstart's answer.

Clones the repository's committed HEAD into a new folder, runs ``make serve`` there on a free port and
sends the quickstart request (``POST /v1/embed``, one item with an id) every second until a vector comes
back; prints the total and each phase, timed by the lines ``make serve`` prints (install until
"==> [1/2]", training until "==> [2/2]", export until "==> serving", then the server's start), stops the
server and removes the clone. The standard library only: it runs before anything is installed.

    python3 loadtest/first_vector.py [--repo .] [--keep DIR] [--out result.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

# Run as a script before anything is installed: marc.machine is standard library only.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from marc.machine import cpu_model, load_average

REQUEST = {"items": [{"id": "sku-1", "text": "red running shoes"}]}  # the README's quickstart curl
# (phase name, the line of `make serve` that ends it); the last phase ends with the first vector.
PHASES = [
    ("install", "==> [1/2]"),
    ("train", "==> [2/2]"),
    ("export", "==> serving"),
    ("server start", None),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ask(port: int) -> dict[str, Any] | None:
    """The quickstart's answer, or None while nothing answers yet."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/embed",
        data=json.dumps(REQUEST).encode(),
        headers={"content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            answer: dict[str, Any] = json.loads(response.read())
    except (OSError, urllib.error.URLError, ValueError):
        return None
    return answer if answer.get("data") and "embedding" in answer["data"][0] else None


def measure(repo: Path, clone: Path, log_path: Path, timeout: float) -> dict[str, Any]:
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout.strip()
    subprocess.run(["git", "clone", "--quiet", "--no-checkout", str(repo), str(clone)], check=True)
    subprocess.run(["git", "checkout", "--quiet", head], cwd=clone, check=True)
    port = free_port()
    load_at_start = load_average()
    start = time.monotonic()
    marks: dict[str, float] = {}
    server = subprocess.Popen(
        ["make", "serve", f"SERVE_PORT={port}"],
        cwd=clone,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: stopped as a whole at the end
    )

    def follow() -> None:  # timestamps each line as `make serve` prints it
        assert server.stdout is not None
        with log_path.open("wb") as log:
            for line in server.stdout:
                log.write(line)
                log.flush()
                for name, marker in PHASES:
                    if marker is not None and name not in marks and line.startswith(marker.encode()):
                        marks[name] = time.monotonic() - start

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    try:
        answer = None
        while answer is None:
            if server.poll() is not None:
                raise RuntimeError(f"make serve exited with status {server.returncode}: see {log_path}")
            if time.monotonic() - start > timeout:
                raise RuntimeError(f"no vector after {timeout:.0f} s: see {log_path}")
            time.sleep(1)
            answer = ask(port)
        total = time.monotonic() - start
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
        reader.join(timeout=10)
    phases, previous = {}, 0.0
    for name, _ in PHASES:
        end = marks.get(name, total) if name != PHASES[-1][0] else total
        phases[name] = round(end - previous, 1)
        previous = end
    return {
        "first_vector_seconds": round(total, 1),
        "phases_seconds": phases,
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "load_average_at_start": load_at_start,
        "commit": head[:12],
        "port": port,
        "answer": {key: answer[key] for key in ("model", "fingerprint", "dim")},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, default=Path("."), help="repository to clone (its HEAD commit)")
    parser.add_argument(
        "--keep", type=Path, help="clone into this new folder and keep it (default: a temporary one)"
    )
    parser.add_argument("--out", type=Path, help="also write the result as JSON here")
    parser.add_argument("--timeout", type=float, default=1800, help="give up after this many seconds")
    args = parser.parse_args(argv)
    parent = Path(tempfile.mkdtemp(prefix="first-vector-"))
    clone = args.keep or parent / "clone"
    log_path = parent / "make-serve.log"
    print(f"==> fresh clone of {args.repo.resolve()} in {clone}; make serve's output: {log_path}", flush=True)
    try:
        result = measure(args.repo.resolve(), clone, log_path, args.timeout)
    except RuntimeError as error:
        print(f"first-vector: {error}", file=sys.stderr)
        return 1
    else:
        phases = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in result["phases_seconds"].items())
        print(
            f"first vector after {result['first_vector_seconds']:.0f} s ({phases}) on {result['cpu']}, "
            f"{result['cores']} cores, load average {result['load_average_at_start'][0]} at the start; "
            f"model {result['answer']['model']} fingerprint {result['answer']['fingerprint'][:16]}",
            flush=True,
        )
        if args.out:
            args.out.write_text(json.dumps(result, indent=2) + "\n")
        return 0
    finally:  # after the result: removing a 3 GB venv takes a while on a busy machine
        if args.keep is None:
            shutil.rmtree(clone, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
