"""Container images for the image tests (tests/deploy/test_image.py, tests/deploy/test_image_gpu.py):
podman as root on a local stand-in for python:3.11-slim-bookworm (no container registry is reachable
here: deploy/docker/python-standin.sh makes one with debootstrap, once per machine), builds of the
Dockerfile's targets, and containers checked as a client sees them."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from loadtest.processes import free_port

REPO = Path(__file__).resolve().parents[2]
STANDIN_SCRIPT = REPO / "deploy" / "docker" / "python-standin.sh"
BASE_IMAGE = "localhost/marc-python:3.11-slim-bookworm"
# crun refuses this machine's hybrid cgroup layout; podman's default ulimits exceed the host's hard limits.
PODMAN = ["podman", "--runtime", "runc"]
ULIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([*PODMAN, *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode != 0:
        pytest.fail(f"podman {' '.join(args[:3])} ... exited {done.returncode}:\n{done.stderr[-4000:]}")
    return done


def require_image_tools() -> None:
    """Skip (saying why) where the image check cannot run; build the stand-in base image once."""
    if shutil.which("podman") is None or shutil.which("debootstrap") is None:
        pytest.skip("podman/debootstrap not installed (`make image-tools` installs them with apt-get)")
    if os.geteuid() != 0:
        pytest.skip("the image check runs rootful podman and debootstrap: run it as root")
    base = subprocess.run([str(STANDIN_SCRIPT), BASE_IMAGE], capture_output=True, text=True, check=False)
    assert base.returncode == 0, base.stdout[-2000:] + base.stderr[-4000:]


def build(target: str, *extra: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    """`podman build --target target`; on success the image id is the last line of stdout."""
    options = [
        *ULIMITS,
        *("--network", "host"),  # pip reaches PyPI from the build steps
        *("--format", "docker"),  # HEALTHCHECK exists in the Docker image format only
        *("--build-arg", f"PYTHON_IMAGE={BASE_IMAGE}"),
        *("--target", target, "--tag", f"marc-serve:{target}"),
    ]
    return podman("build", *options, *extra, str(REPO), timeout=timeout, check=False)


def build_timed(target: str, *extra: str, timeout: float = 1800) -> str:
    """Build ``target`` (failing the test if it does not build), print its size and build time; the
    image id."""
    start = time.monotonic()
    done = build(target, *extra, timeout=timeout)
    assert done.returncode == 0, f"building {target}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    image = done.stdout.split()[-1]
    seconds = time.monotonic() - start
    print(f"image marc-serve:{target}: {image_bytes(image) / 1e6:.0f} MB, built in {seconds:.1f} s")
    return image


def run_once(*args: str) -> subprocess.CompletedProcess[str]:
    """``podman run --rm <args>`` (options, image, command) to its end; its exit status not checked."""
    return podman("run", "--rm", *ULIMITS, *args, check=False)


def run_python(image: str, code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -c code args`` in a throw-away container of ``image``."""
    return run_once("--entrypoint", "python", image, "-c", code, *args)


def image_bytes(image: str) -> int:
    return int(podman("image", "inspect", "--format", "{{.Size}}", image).stdout)


class Container:
    """One detached container on the host network (MARC_PORT = a free port), removed on exit."""

    def __init__(self, image: str, *run_args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environment = {"MARC_PORT": str(self.port), **(env or {})}
        env_args = [arg for name, value in environment.items() for arg in ("--env", f"{name}={value}")]
        self._args = ["run", "--detach", *ULIMITS, "--network", "host", "--read-only", *env_args, *run_args]
        self._image = image
        self.id = ""

    def __enter__(self) -> Container:
        self.id = podman(*self._args, self._image).stdout.split()[-1]
        deadline = time.monotonic() + 90
        while True:
            if not self.running():
                pytest.fail(f"the container exited while starting:\n{self.logs()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"not ready in 90 s:\n{self.logs()}"
            time.sleep(0.2)

    def __exit__(self, *exc: object) -> None:
        podman("rm", "--force", "--time", "0", self.id, check=False)

    def running(self) -> bool:
        return podman("inspect", "--format", "{{.State.Running}}", self.id).stdout.strip() == "true"

    def logs(self) -> str:
        done = podman("logs", self.id, check=False)
        return (done.stdout + done.stderr)[-4000:]

    def exec(self, *command: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        env_args = [arg for name, value in (env or {}).items() for arg in ("--env", f"{name}={value}")]
        return podman("exec", *env_args, self.id, *command, check=False)

    def embed(self, texts: list[str]) -> dict[str, Any]:
        items = [{"text": text} for text in texts]
        response = httpx.post(f"{self.url}/v1/embed", json={"items": items}, timeout=30)
        assert response.status_code == 200, response.text
        return response.json()


def mount_read_only(artifact: Path) -> list[str]:
    """``podman run`` arguments mounting ``artifact`` read-only where the images look for it."""
    return ["--mount", f"type=bind,source={artifact},target=/models/current,readonly=true"]
