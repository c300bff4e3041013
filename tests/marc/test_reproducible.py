"""`make artifact`'s two commands (`marc train`, `marc export --int8`) give bit-identical artifacts, so
the same fingerprint, under conditions that differ as two machines of one kind do: working directory,
thread count, Python's hash seed, a cold or a warm feature cache, MKL running on a CPU without AVX-512
(MKL_ENABLE_INSTRUCTIONS=AVX2). A control shows the check has teeth: letting torch's own kernels use
AVX-512 (what `marc.determinism` pins away) changes the fingerprint. Tiny backbone, small data."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from artifact.manifest import Manifest, read_manifest
from marc.determinism import PINNED_CPU_KERNELS

MARC = str(Path(sys.executable).parent / "marc")
TRAIN = ["--backbone", "tiny", "--layer", "2", "--dim", "16", "--items", "300", "--users", "150"]


def build(directory: Path, cache: Path, int8: bool = True, **env: str) -> Manifest:
    """train + export as `make artifact BACKBONE=tiny ...` runs them, from ``directory`` as cwd."""
    directory.mkdir(parents=True, exist_ok=True)
    # The machine's own settings of the pinned variables would override the pins: start without them.
    environment = {k: v for k, v in os.environ.items() if k not in PINNED_CPU_KERNELS} | env
    for command in (
        [MARC, "train", *TRAIN, "--epochs", "3", "--cache-dir", str(cache), "--out", "run"],
        [MARC, "export", "--checkpoint", "run", "--out", "artifact", "--name", "tiny-l2-k16"]
        + (["--int8"] if int8 else []),
    ):
        done = subprocess.run(command, cwd=directory, env=environment, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return read_manifest(directory / "artifact")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def first(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Manifest]:
    """The reference build: folder (cwd) and manifest; its feature cache is ``<folder>/../features``."""
    root = tmp_path_factory.mktemp("reproducible")
    return root / "a", build(root / "a", root / "features", PYTHONHASHSEED="1")


@pytest.mark.slow
def test_builds_in_different_conditions_are_bit_identical(first: tuple[Path, Manifest]) -> None:
    folder, manifest = first
    root = folder.parent
    other_machine = build(
        root / "elsewhere" / "b",
        root / "cold-features",
        OMP_NUM_THREADS="1",
        MKL_ENABLE_INSTRUCTIONS="AVX2",
        PYTHONHASHSEED="2",
    )
    warm = build(root / "c", root / "features", int8=False, OMP_NUM_THREADS="8", PYTHONHASHSEED="3")
    assert len(list((root / "features").iterdir())) == 1  # the third build read the first one's states

    assert other_machine.fingerprint == manifest.fingerprint == warm.fingerprint
    assert other_machine.variants["int8"].fingerprint == manifest.variants["int8"].fingerprint
    for name in ("compressor.safetensors", "adapter.safetensors"):
        assert digest(root / "elsewhere" / "b" / "run" / name) == digest(folder / "run" / name)
    assert manifest.export["kernels"] == other_machine.export["kernels"]
    assert "MKL_CBWR=AVX2,STRICT" in manifest.export["kernels"]


@pytest.mark.slow
def test_unpinned_kernels_change_the_fingerprint(first: tuple[Path, Manifest], tmp_path: Path) -> None:
    if "avx512f" not in Path("/proc/cpuinfo").read_text():
        pytest.skip("this CPU has no AVX-512: torch picks the pinned AVX2 kernels anyway")
    native = build(tmp_path / "native", tmp_path / "features", int8=False, ATEN_CPU_CAPABILITY="avx512")
    assert native.fingerprint != first[1].fingerprint
    assert "ATen kernels AVX512" in native.export["kernels"]
