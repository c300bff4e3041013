"""`python -m loadtest.gpu_check` where there is no GPU: it refuses with one line saying what is missing,
and its model part runs on the CPU (``--cpu``) at a tiny size: the same code that times the served
graph on CUDA, plain runs beside IO binding."""

from __future__ import annotations

import json
from pathlib import Path

import onnxruntime
import pytest

from loadtest.gpu_check import QUICK, REFUSED, main


def test_without_cuda_it_refuses_saying_what_is_missing(
    tiny_artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert "CUDAExecutionProvider" not in onnxruntime.get_available_providers()  # this venv: CPU build
    assert main(["--artifact", str(tiny_artifact), "--out", str(tmp_path / "report.json")]) == REFUSED
    error = capsys.readouterr().err
    assert "gpu-check: refusing: this onnxruntime" in error and "has no CUDAExecutionProvider" in error
    assert "make gpu-check" in error
    assert not (tmp_path / "report.json").exists()
    assert main(["--artifact", str(tmp_path)]) == REFUSED
    assert "is not an artifact" in capsys.readouterr().err


def test_the_model_part_runs_on_cpu_at_a_tiny_size(tiny_artifact: Path, tmp_path: Path) -> None:
    out, table = tmp_path / "report.json", tmp_path / "report.md"
    args = ["--artifact", str(tiny_artifact), "--cpu", "--quick", "--out", str(out), "--markdown", str(table)]
    assert main(args) == 0
    report = json.loads(out.read_text())
    rows = report["rows"]
    sizes = QUICK["cpu"]
    cells = {(r["variant"], r["batch"], r["length"]) for r in rows}
    assert cells == {(v, b, n) for v in ("fp32", "int8") for b in sizes.batches for n in sizes.lengths}
    for row in rows:
        assert row["engine"] == "ort cpu" and row["ms"] > 0 and row["io_binding_ms"] > 0
        assert row["items_per_s"] == pytest.approx(row["batch"] / row["ms"] * 1000, rel=0.01)
    assert report["failed"] == [] and report["machine"]["cpu"]
    text = table.read_text()
    assert text.startswith("GPU check on no GPU (--cpu)") and "| ort cpu | int8 |" in text
