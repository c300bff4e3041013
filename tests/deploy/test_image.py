"""The serving image, built and run for real. podman builds the Dockerfile's `cpu` and `cpu-bundled`
targets on a local stand-in for python:3.11-slim-bookworm (no container registry is reachable here:
deploy/docker/python-standin.sh makes one with debootstrap, once per machine) and the containers are
checked as a client sees them: read-only root filesystem, artifact mounted read-only, a Redis of the
compose file's shape, /healthz, /readyz, /v1/embed equal to the same artifact served outside the
container, the image's own HEALTHCHECK, uid 10001, SIGTERM drain, image size and contents.

`make test` installs podman, runc and debootstrap first (`make image-tools`); without them (or not as
root) the tests skip and say why. The GPU image is built and run the same way by `make image-check-gpu`
(tests/deploy/test_image_gpu.py: gigabytes of CUDA wheels, so not part of `make test`)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis

from loadtest.processes import free_port
from service.cache.keys import KeySpace
from tests.support.containers import (
    Container,
    build,
    build_timed,
    image_bytes,
    mount_read_only,
    podman,
    require_image_tools,
    run_python,
)
from tests.support.redis_server import RedisProcess
from tests.support.reference import served_fingerprint
from tests.support.servers import LiveServer

# Builds two images (and, once per machine, the stand-in base): minutes.
pytestmark = pytest.mark.slow

CONTAINER_UID = 10001
DRAIN_SECONDS = 2.0
# The stand-in base is ~200 MB (the official slim image ~130 MB); ONNX Runtime and the service add
# ~260 MB. torch alone would add more than 700 MB: this bound catches a training dependency sneaking in.
MAX_IMAGE_BYTES = 600 * 10**6
TEXTS = ["red running shoes", "organic green tea", "Nordik premium formal cotton shoes in red, vegan"]
# The containers serve int8 unmeasured, as the host reference does (tests.support.servers.TEST_VARIANTS).
TEST_VARIANT_ENV = {"MARC_INT8_MIN_SPEEDUP": "0"}


@pytest.fixture(scope="module")
def images(tiny_artifact: Path) -> dict[str, str]:
    """``{target: image id}`` for `cpu` and `cpu-bundled` (bundling the tiny artifact)."""
    require_image_tools()
    return {
        "cpu": build_timed("cpu"),
        "cpu-bundled": build_timed("cpu-bundled", "--build-context", f"model={tiny_artifact}"),
    }


@pytest.fixture(scope="module")
def compose_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    """A private redis-server configured like docker-compose.yml's (bounded LRU cache, no persistence)."""
    with RedisProcess(
        "--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru", cwd=tmp_path_factory.mktemp("redis")
    ) as server:
        yield server


@pytest.fixture(scope="module")
def cpu_container(
    images: dict[str, str], tiny_artifact: Path, compose_redis: RedisProcess
) -> Iterator[Container]:
    """The `cpu` image as compose runs it: read-only root, artifact mounted read-only, Redis cache."""
    env = {"MARC_REDIS_URL": compose_redis.url, **TEST_VARIANT_ENV}
    with Container(images["cpu"], *mount_read_only(tiny_artifact), env=env) as container:
        yield container


def host_embeddings(artifact: Path, texts: list[str]) -> np.ndarray:
    """The same artifact served outside any container (in-process cache, this venv's ONNX Runtime)."""
    with LiveServer(artifact=artifact) as live, live.client() as client:
        response = client.post("/v1/embed", json={"items": [{"text": t} for t in texts]})
    assert response.status_code == 200, response.text
    return np.array([row["embedding"] for row in response.json()["data"]], dtype=np.float32)


def assert_same_vectors(body: dict[str, Any], expected: np.ndarray) -> None:
    served = np.array([row["embedding"] for row in body["data"]], dtype=np.float32)
    # The image pins ONNX Runtime (ONNXRUNTIME_VERSION); this venv may run another release, whose
    # kernels may round differently in the last bits.
    np.testing.assert_allclose(served, expected, rtol=0, atol=1e-5)


def test_cpu_image_serves_the_mounted_artifact_like_the_host(
    cpu_container: Container, tiny_artifact: Path, compose_redis: RedisProcess
) -> None:
    fingerprint = served_fingerprint(tiny_artifact)
    assert httpx.get(f"{cpu_container.url}/healthz", timeout=5).json() == {"status": "ok"}
    ready = httpx.get(f"{cpu_container.url}/readyz", timeout=5).json()
    assert (ready["fingerprint"], ready["provider"]) == (fingerprint, "CPUExecutionProvider")
    assert ready["cache"] == {"backend": "redis", "status": "ok"}

    first, second = cpu_container.embed(TEXTS), cpu_container.embed(TEXTS)
    assert first["fingerprint"] == fingerprint
    assert [row["cached"] for row in first["data"]] == [False] * len(TEXTS)
    assert [row["cached"] for row in second["data"]] == [True] * len(TEXTS)  # read back from Redis
    expected = host_embeddings(tiny_artifact, TEXTS)
    assert_same_vectors(first, expected)
    assert_same_vectors(second, expected)
    client = redis.Redis.from_url(compose_redis.url)
    stored = sorted(
        key.decode() for key in client.scan_iter(f"{KeySpace('marc', fingerprint).namespace}:t:*")
    )
    client.close()
    assert len(stored) == len(TEXTS)


def test_container_runs_as_uid_10001_on_a_read_only_filesystem(cpu_container: Container) -> None:
    status = cpu_container.exec("cat", "/proc/1/status").stdout  # PID 1 is the server itself
    uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
    assert uids == [str(CONTAINER_UID)] * 4
    assert "marc" in cpu_container.exec("cat", "/proc/1/cmdline").stdout
    for path in ("/opt/venv/written-by-test", "/models/current/written-by-test"):
        denied = cpu_container.exec("touch", path)
        assert denied.returncode != 0 and "Read-only file system" in denied.stderr, path
    assert cpu_container.exec("touch", "/tmp/scratch").returncode == 0  # HOME=/tmp stays writable


def test_the_images_own_healthcheck_passes_and_can_fail(
    images: dict[str, str], cpu_container: Container
) -> None:
    inspected = json.loads(podman("image", "inspect", images["cpu"]).stdout)[0]
    check = inspected["Healthcheck"]["Test"]
    assert check[0] == "CMD" and "/healthz" in " ".join(check)
    assert podman("healthcheck", "run", cpu_container.id, check=False).returncode == 0
    # The same command pointed at a port nobody listens on fails: the check is not a no-op.
    assert cpu_container.exec(*check[1:], env={"MARC_PORT": str(free_port())}).returncode != 0


def test_sigterm_drains_then_exits_cleanly(images: dict[str, str], tiny_artifact: Path) -> None:
    env = {"MARC_DRAIN_SECONDS": str(DRAIN_SECONDS)}
    with Container(images["cpu"], *mount_read_only(tiny_artifact), env=env) as c:
        signalled = time.monotonic()
        podman("kill", "--signal", "TERM", c.id)
        assert httpx.get(f"{c.url}/readyz", timeout=5).status_code == 503  # out of the balancer first
        assert c.embed(["still served while draining"])["data"][0]["cached"] is False
        exit_code = int(podman("wait", c.id, timeout=60).stdout.strip())
        stopped_after = time.monotonic() - signalled
        logs = c.logs()
    assert exit_code in (0, 143), logs  # 143: uvicorn re-raised SIGTERM after its clean shutdown
    assert DRAIN_SECONDS <= stopped_after < DRAIN_SECONDS + 30, stopped_after
    assert "draining" in logs and "Application shutdown complete" in logs, logs


def test_bundled_image_serves_its_own_artifact(images: dict[str, str], tiny_artifact: Path) -> None:
    with Container(images["cpu-bundled"], env=TEST_VARIANT_ENV) as container:
        body = container.embed(TEXTS)
        mounts = podman("inspect", "--format", "{{json .Mounts}}", container.id).stdout
    assert body["fingerprint"] == served_fingerprint(tiny_artifact)
    assert_same_vectors(body, host_embeddings(tiny_artifact, TEXTS))
    assert "/models" not in mounts


def test_bundled_build_without_an_artifact_stops_with_a_message(images: dict[str, str]) -> None:
    done = build("cpu-bundled")
    assert done.returncode != 0
    assert "no artifact: build with --build-context model=" in done.stderr + done.stdout


def test_image_size_and_contents(images: dict[str, str]) -> None:
    size = image_bytes(images["cpu"])
    assert size < MAX_IMAGE_BYTES, f"marc-serve:cpu is {size / 1e6:.0f} MB"
    probe = "import importlib.util as u; print([m for m in ('torch', 'transformers') if u.find_spec(m)])"
    done = run_python(images["cpu"], probe)
    assert done.stdout.strip() == "[]"
