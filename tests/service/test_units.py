"""Service building blocks without HTTP: key layout, the LRU cache, encoder loading and provider choice."""

from __future__ import annotations

import asyncio
import logging
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from artifact.names import ArtifactError
from service.cache.keys import KeySpace, normalise_text
from service.cache.stores import LruCache
from service.model.encoder import load_encoder
from service.settings import Settings, available_cpus
from tests.support.reference import onnx_reference


def test_key_layout_and_normalisation() -> None:
    keys = KeySpace("marc", "ab" * 32)
    assert normalise_text("  Cafe\u0301 au lait \n") == "Caf\u00e9 au lait"
    assert re.fullmatch(r"marc:abababababababab:f32t:t:[0-9a-f]{64}", keys.text_key("x"))
    assert keys.text_key(normalise_text(" Cafe\u0301")) == keys.text_key("Caf\u00e9")
    assert keys.id_key("sku-1") == "marc:abababababababab:f32t:i:sku-1"
    assert KeySpace("marc", "ab" * 32, "float16").id_key("sku-1") == "marc:abababababababab:f16t:i:sku-1"


def test_lru_cache_evicts_the_least_recently_used() -> None:
    async def scenario() -> list[bytes | None]:
        cache = LruCache(max_items=2, ttl_seconds=0)
        await cache.set_many([("a", b"1"), ("b", b"2")])
        await cache.get_many(["a"])  # a is now the most recent
        await cache.set_many([("c", b"3")])
        return await cache.get_many(["a", "b", "c"])

    assert asyncio.run(scenario()) == [b"1", None, b"3"]


def test_encoder_on_cpu_logs_one_line_and_matches_onnx(
    tiny_artifact: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="service.model.encoder"):
        encoder = load_encoder(tiny_artifact, int8_min_speedup=0)
    # auto on CPU with no speed asked of int8 = int8, as the artifact's int8 has per-row scales
    assert encoder.provider == "CPUExecutionProvider" and encoder.artifact.variant == "int8"
    assert [r.getMessage() for r in caplog.records if "execution provider" in r.getMessage()] == [
        "execution provider: CPUExecutionProvider (CUDA not available), variant int8 "
        "(MARC_INT8_MIN_SPEEDUP=0: int8 wherever the artifact has it, not measured), model tiny-artifact"
    ]
    texts = ["short", "a much longer text about a red leather sofa and a lamp", "medium length text"]
    encoded = encoder.embed(texts, max_batch_size=2)
    assert [run.items for run in encoded.runs] == [2, 1]
    np.testing.assert_allclose(encoded.vectors, onnx_reference(tiny_artifact, texts), atol=1e-5)


def test_int8_variant_has_its_own_fingerprint(tiny_artifact: Path) -> None:
    fp32, int8 = load_encoder(tiny_artifact, variant="fp32"), load_encoder(tiny_artifact, variant="int8")
    assert int8.artifact.variant == "int8" and int8.artifact.fingerprint != fp32.artifact.fingerprint
    texts = ["red shoes", "blue wireless speaker"]
    a, b = fp32.embed(texts, 8).vectors, int8.embed(texts, 8).vectors
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() > 0.9


def test_cuda_requested_without_cuda_is_refused_clearly(tiny_artifact: Path) -> None:
    with pytest.raises(ArtifactError, match="MARC_PROVIDER=cuda"):
        load_encoder(tiny_artifact, provider="cuda")


def test_service_never_imports_torch_or_transformers() -> None:
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'transformers'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import service.app, service.cli, service.precompute, service.vector_files\n"
        "import records.jsonl  # what `marc precompute` reads items.jsonl with\n"
        "from marc_serve.cli import build_parser\n"
        "build_parser().parse_args(['serve', '--help'])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "blocked" not in result.stderr, result.stderr
    assert "usage: marc serve" in result.stdout


def test_cpus_are_shared_out_among_every_run_in_progress(tmp_path: Path) -> None:
    cpus = available_cpus()
    quota = tmp_path / "cpu.max"
    quota.write_text("150000 100000\n")  # a container limited to 1.5 CPUs
    assert available_cpus(quota) == min(cpus, 2)
    quota.write_text("max 100000\n")
    assert available_cpus(quota) == cpus == available_cpus(tmp_path / "missing")

    def threads(**values: int) -> int:
        return Settings(artifact=tmp_path, **values).serving_intra_threads

    assert threads(model_runners=1, workers=1) == 0  # ORT's own default
    assert threads(model_runners=2, workers=1) == max(1, cpus // 2)
    assert threads(model_runners=2, workers=2) == max(1, cpus // 4)
    assert threads(model_runners=2, workers=2, ort_intra_threads=3) == 3  # explicit wins
