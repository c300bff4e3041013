"""`marc precompute` and `marc serve` as users run them (subprocesses of the real CLI)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest

from loadtest.processes import free_port
from tests.support.redis_server import SHARED_REDIS_URL, delete_prefix, unique_prefix
from tests.support.reference import onnx_reference
from tests.support.servers import LiveServer

ITEMS = [
    (f"sku-{i}", f"{('red', 'blue', 'green')[i % 3]} {('shoes', 'jacket', 'lamp', 'sofa')[i % 4]} no {i}")
    for i in range(40)
]


def _marc(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "marc_serve", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        check=False,
    )


@pytest.fixture
def prefix() -> Iterator[str]:
    value = unique_prefix()
    yield value
    delete_prefix(SHARED_REDIS_URL, value)


@pytest.mark.slow
def test_precompute_fills_redis_and_lookup_serves_it(
    tiny_artifact: Path, tmp_path: Path, prefix: str
) -> None:
    items_file = tmp_path / "items.jsonl"
    items_file.write_text("".join(json.dumps({"item_id": i, "text": t}) + "\n" for i, t in ITEMS))
    common = ["--artifact", str(tiny_artifact), "--items", str(items_file), "--redis-url", SHARED_REDIS_URL]
    common += ["--cache-prefix", prefix, "--batch-size", "8", "--chunk-items", "16"]

    first = _marc("precompute", *common, "--out", str(tmp_path / "vectors.npy"))
    assert first.returncode == 0, first.stderr
    assert "40 in this shard: 0 already cached, 40 computed, 0 failed" in first.stdout
    again = _marc("precompute", *common, "--out", str(tmp_path / "vectors.parquet"))
    assert again.returncode == 0, again.stderr
    assert "40 already cached, 0 computed, 0 failed" in again.stdout  # resumable: nothing recomputed

    expected = onnx_reference(tiny_artifact, [text for _, text in ITEMS])
    vectors = np.load(tmp_path / "vectors.npy")
    ids = [json.loads(line) for line in (tmp_path / "vectors.ids.jsonl").read_text().splitlines()]
    assert ids == [item_id for item_id, _ in ITEMS]
    np.testing.assert_allclose(vectors, expected, atol=1e-5)
    table = pq.read_table(tmp_path / "vectors.parquet")
    assert table.column("id").to_pylist() == ids
    np.testing.assert_array_equal(np.array(table.column("embedding").to_pylist(), dtype=np.float32), vectors)

    with LiveServer(artifact=tiny_artifact, redis_url=SHARED_REDIS_URL, cache_prefix=prefix) as live:
        with live.client() as client:
            found = client.post("/v1/items/lookup", json={"ids": [*ids[:5], "unknown-sku"]}).json()
            embedded = client.post("/v1/embed", json={"items": [{"text": ITEMS[7][1]}]}).json()
        model_runs = live.metric("marc_items_embedded_total")
    assert [d["id"] for d in found["data"]] == ids[:5] and found["unknown"] == ["unknown-sku"]
    # JSON floats are float32's shortest decimal form: exact once read back as float32.
    np.testing.assert_array_equal(
        np.array([d["embedding"] for d in found["data"]], dtype=np.float32), vectors[:5]
    )
    assert embedded["data"][0]["cached"] is True and model_runs == 0


def test_precompute_refuses_bad_input(tiny_artifact: Path, tmp_path: Path) -> None:
    bad = tmp_path / "items.jsonl"
    bad.write_text('{"item_id": "a", "text": "ok"}\n{"item_id": "b"}\n')
    nothing = _marc(
        "precompute", "--artifact", str(tiny_artifact), "--items", str(bad), env={"MARC_REDIS_URL": ""}
    )
    malformed = _marc(
        "precompute", "--artifact", str(tiny_artifact), "--items", str(bad), "--out", str(tmp_path / "v.npy")
    )
    assert nothing.returncode == 2 and "nothing to write" in nothing.stderr
    assert malformed.returncode == 3 and "line 2" in malformed.stderr and "text" in malformed.stderr


@pytest.mark.slow
def test_marc_serve_runs_and_drains_on_sigterm(tiny_artifact: Path) -> None:
    port = free_port()
    command = ["serve", "--artifact", str(tiny_artifact), "--port", str(port), "--drain-seconds", "1.5"]
    process = subprocess.Popen(
        [sys.executable, "-m", "marc_serve", *command],
        env={**os.environ, "MARC_LOG_LEVEL": "WARNING", "MARC_REDIS_URL": ""},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    body = {"items": [{"text": "served by the CLI"}]}
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, "marc serve did not come up"
            time.sleep(0.1)
        response = httpx.post(f"{url}/v1/embed", json=body, timeout=10)
        assert response.status_code == 200 and len(response.json()["data"][0]["embedding"]) == 16

        process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        # Draining: not ready any more, but still answering.
        assert httpx.get(f"{url}/readyz", timeout=5).status_code == 503
        assert httpx.post(f"{url}/v1/embed", json=body, timeout=10).status_code == 200
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    # uvicorn shuts down gracefully, then re-raises the captured SIGTERM (the conventional exit).
    assert process.returncode in (0, -signal.SIGTERM), output
    assert "Traceback" not in output


def test_marc_serve_refuses_keep_alive_outside_its_bounds(tiny_artifact: Path) -> None:
    # Every flag overrides the setting of its own name; the settings' bounds apply to flags and variables.
    flag = _marc("serve", "--artifact", str(tiny_artifact), "--keep-alive-seconds", "0")
    variable = _marc("serve", "--artifact", str(tiny_artifact), env={"MARC_KEEP_ALIVE_SECONDS": "3601"})
    for refused in (flag, variable):
        assert refused.returncode != 0 and "invalid settings (keep_alive_seconds:" in refused.stderr, refused
