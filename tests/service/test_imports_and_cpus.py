"""The serving side never imports the training stack; CPUs shared out among every run in progress."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from service.settings import Settings, available_cpus


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
