"""Shared fixtures. Heavy fixtures (backbones, artifacts) are session-scoped and built once."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from marc.determinism import pin_cpu_kernels

# The kernels every `marc` command computes with, fixed before anything here imports torch: otherwise the
# first in-process CLI call would pin them only for the worker processes started after it, and
# results would depend on the test order.
pin_cpu_kernels()
# The tests' servers and commands serve int8 wherever the artifact has it, unmeasured (see
# tests.support.servers.TEST_VARIANTS): for the ones started with this process's environment.
os.environ["MARC_INT8_MIN_SPEEDUP"] = "0"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files holding a `slow` test first (stable otherwise): `make test`'s workers take whole files in
    collection order, so the longest ones (the image builds, the real backbone) start at once instead of
    leaving one worker busy at the end while the other idles."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)


# --- tiny checkpoints and artifacts (export/) ------------------------------------------------------
# Tiny random backbone (4 layers, hidden 64), cut at layer 2, k=16, max_length 32: export takes ~1 s.


def make_tiny_checkpoint(directory: Path, *, compressor_seed: int = 0, **model_config: object) -> Path:
    """Write a tiny-backbone checkpoint with a seeded random compressor (``model_config`` overrides
    ModelConfig fields: layer, pooling, dim, max_length, ...)."""
    import torch

    from marc.checkpoint import save_checkpoint
    from marc.config import ModelConfig
    from marc.modules import Compressor

    config = ModelConfig(**{"backbone": "tiny", "layer": 2, "dim": 16, "max_length": 32, **model_config})
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(compressor_seed)
    compressor = Compressor(config.tiny.hidden_size, config.dim, config.compressor_hidden)
    torch.random.set_rng_state(generator_state)
    return save_checkpoint(
        directory,
        config,
        compressor,
        backbone_info={"source": config.backbone, "layers": config.tiny.num_layers},
        metrics={"valid_auc": 0.5, "note": "random compressor (test fixture)"},
        extra={"train": {"mode": "frozen"}, "data": {"source": "fixture"}},
    )


@pytest.fixture(scope="session")
def tiny_checkpoint_factory() -> Callable[..., Path]:
    """``factory(directory, compressor_seed=0, **ModelConfig overrides) -> checkpoint dir``."""
    return make_tiny_checkpoint


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny_checkpoint"))


def _export(checkpoint: Path, out: Path) -> Path:
    from export.onnx_export import export_checkpoint

    export_checkpoint(checkpoint, out, int8=True, fp16=True, name=out.name)
    return out


@pytest.fixture(scope="session")
def tiny_artifact(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Artifact directory with fp32, int8 and fp16 variants (name 'tiny-artifact')."""
    return _export(tiny_checkpoint, tmp_path_factory.mktemp("artifacts") / "tiny-artifact")


@pytest.fixture(scope="session")
def tiny_artifact_other(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Same shape as `tiny_artifact` (dim 16) but another compressor seed: another fingerprint."""
    checkpoint = make_tiny_checkpoint(tmp_path_factory.mktemp("tiny_checkpoint_other"), compressor_seed=1)
    return _export(checkpoint, tmp_path_factory.mktemp("artifacts") / "tiny-artifact-other")


@pytest.fixture(scope="session")
def export_tiny(
    tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint_factory: Callable[..., Path]
) -> Callable[..., Path]:
    """export_tiny(**overrides) -> artifact dir (fp32 only) of a tiny checkpoint; cached per overrides."""
    from export.onnx_export import export_checkpoint

    cache: dict[str, Path] = {}

    def export(**overrides: object) -> Path:
        key = json.dumps(overrides, sort_keys=True)
        if key not in cache:
            root = tmp_path_factory.mktemp("export")
            checkpoint = tiny_checkpoint_factory(root / "checkpoint", **overrides)
            export_checkpoint(checkpoint, root / "artifact")
            cache[key] = root / "artifact"
        return cache[key]

    return export
