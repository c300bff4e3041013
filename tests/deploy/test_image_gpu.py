"""The GPU image (the Dockerfile's `gpu` target), built and run for real on a machine without a GPU:
`make image-check-gpu` (not part of `make test`: its CUDA wheels are gigabytes; these tests carry the
`gpu_image` marker, which pytest's default options deselect).

podman builds it on the same local stand-in for python:3.11-slim-bookworm as the CPU image
(tests/support/containers.py). Checked here: ONNX Runtime in the image lists CUDAExecutionProvider and
every CUDA library it links or loads resolves from the image's own NVIDIA wheels (only the driver's
libcuda.so.1, which the NVIDIA container toolkit mounts on a GPU host, is missing); with no GPU visible
`MARC_PROVIDER=auto` serves from the CPU, says why, and answers real requests with the artifact's
vectors, while `MARC_PROVIDER=cuda` refuses to start and the GPU check refuses naming the missing GPU.
What needs a GPU is `make gpu-check` (docs/gpu.md)."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.support.containers import (
    Container,
    build_timed,
    image_bytes,
    mount_read_only,
    require_image_tools,
    run_once,
    run_python,
)
from tests.support.reference import onnx_reference

pytestmark = pytest.mark.gpu_image

TEXTS = ["red running shoes", "organic green tea", "Nordik premium formal cotton shoes in red, vegan"]
# What ONNX Runtime's CUDA provider links (readelf -d: NEEDED) and loads when an operator needs it.
LINKED = ["libcublasLt.so.13", "libcublas.so.13", "libcurand.so.10", "libcudart.so.13"]
LOADED = ["libcudnn.so.9", "libcufft.so.12", "libnvrtc.so.13"]
DRIVER = "libcuda.so.1"
# onnxruntime-gpu (~340 MB installed) and the CUDA 13 + cuDNN 9 wheels (~3 GB) on the ~200 MB base; a
# torch (CUDA: several GB more) sneaking in would pass this bound.
MAX_IMAGE_BYTES = 6 * 10**9

CUDA_PROVIDER_LIBRARY = """
import ctypes, os, subprocess, onnxruntime
print(onnxruntime.__version__, onnxruntime.get_available_providers())
library = os.path.join(os.path.dirname(onnxruntime.__file__), "capi", "libonnxruntime_providers_cuda.so")
print(subprocess.run(["ldd", library], capture_output=True, text=True).stdout)
for name in {names}:
    ctypes.CDLL(name)
    print("loaded", name)
"""


@pytest.fixture(scope="module")
def gpu_image() -> str:
    require_image_tools()
    return build_timed("gpu", timeout=3600)


def test_onnxruntime_lists_cuda_and_finds_every_cuda_library(gpu_image: str) -> None:
    done = run_python(gpu_image, CUDA_PROVIDER_LIBRARY.format(names=LINKED + LOADED))
    assert done.returncode == 0, done.stdout + done.stderr
    first, *rest = done.stdout.splitlines()
    assert first.startswith("1.31.") and "CUDAExecutionProvider" in first, first
    ldd = [line.split() for line in rest if "=>" in line]
    resolved = {fields[0]: fields[2] for fields in ldd}
    assert [name for name, path in resolved.items() if path == "not"] == [DRIVER], rest
    for name in LINKED:
        assert resolved[name].startswith("/opt/venv/nvidia/"), (name, resolved[name])
    assert [line for line in rest if line.startswith("loaded")] == [f"loaded {n}" for n in LINKED + LOADED]


def test_without_a_gpu_auto_serves_from_the_cpu_and_says_why(gpu_image: str, tiny_artifact: Path) -> None:
    with Container(gpu_image, *mount_read_only(tiny_artifact)) as container:  # MARC_PROVIDER=auto
        card = httpx.get(f"{container.url}/v1/models", timeout=10).json()["data"][0]
        body = container.embed(TEXTS)
        logs = container.logs()
    assert card["provider"] == "CPUExecutionProvider" and card["serving"]["device"] == "cpu"
    assert card["variant_choice"]["rule"] == "measured"  # auto on CPU: int8 or fp32, measured here
    assert "CUDAExecutionProvider listed but failed to load" in logs, logs
    assert body["fingerprint"] == card["fingerprint"]
    served = np.array([row["embedding"] for row in body["data"]], dtype=np.float32)
    expected = onnx_reference(tiny_artifact, TEXTS, card["variant"])
    np.testing.assert_allclose(served, expected, rtol=0, atol=1e-5)


def test_without_a_gpu_cuda_required_refuses_to_start(gpu_image: str, tiny_artifact: Path) -> None:
    done = run_once(*mount_read_only(tiny_artifact), "--env", "MARC_PROVIDER=cuda", gpu_image)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "marc serve: refusing to start: MARC_PROVIDER=cuda but CUDAExecutionProvider failed to load" in (
        done.stderr
    )


def test_the_gpu_check_in_the_image_refuses_naming_the_missing_gpu(
    gpu_image: str, tiny_artifact: Path
) -> None:
    code = "import sys; from loadtest.gpu_check import main; sys.exit(main(sys.argv[1:]))"
    args = ["--artifact", "/models/current", "--out", "/tmp/gpu-check.json"]
    done = run_once(*mount_read_only(tiny_artifact), "--entrypoint", "python", gpu_image, "-c", code, *args)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "CUDAExecutionProvider is listed but no session comes up on CUDA device 0" in done.stderr


def test_gpu_image_size_and_contents(gpu_image: str) -> None:
    size = image_bytes(gpu_image)
    assert size < MAX_IMAGE_BYTES, f"marc-serve:gpu is {size / 1e6:.0f} MB"
    probe = "import importlib.util as u; print([m for m in ('torch', 'transformers') if u.find_spec(m)])"
    assert run_python(gpu_image, probe).stdout.strip() == "[]"
