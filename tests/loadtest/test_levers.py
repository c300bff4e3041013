"""Smoke run of the cold-path levers table on the tiny artifact: real servers with their own settings,
real Redis, raw ONNX Runtime one run at a time and two single-threaded runs side by side (no timing
assertions: the numbers are for BENCHMARKS.md)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest

from loadtest import profile_path
from loadtest.levers import main


@pytest.mark.slow
def test_levers_table_has_every_setting_and_limit(tiny_artifact: Path, tmp_path: Path) -> None:
    markdown = tmp_path / "levers.md"
    code = main(
        [
            "--artifact",
            str(tiny_artifact),
            "--rounds",
            "1",
            "--duration",
            "1",
            "--concurrency",
            "8",
            "--setting",
            "one:",
            "--setting",
            "two:MARC_MODEL_RUNNERS=2,MARC_ORT_INTRA_THREADS=1",
            "--markdown",
            str(markdown),
        ]
    )
    assert code == 0
    rows = [line.split(" | ") for line in markdown.read_text().splitlines() if line.startswith("| ")][2:]
    assert [row[0].strip("| ") for row in rows] == [
        "one",
        "two",
        "raw ORT, batch 16, 1 run",
        "raw ORT, batch 16, 2 single-thread runs",
    ]
    ratios = [float(row[-1].strip(" |")) for row in rows]
    assert all(math.isfinite(r) and r > 0 for r in ratios) and 1.0 in ratios[2:]  # the best limit = 1


@pytest.mark.parametrize("setting", ["x:PATH=/tmp", "x:MARC_MODEL_RUNNERS", ":MARC_MODEL_RUNNERS=2"])
def test_a_setting_must_name_service_variables_with_values(setting: str) -> None:
    with pytest.raises(SystemExit):
        main(["--setting", setting])


@pytest.mark.parametrize("tool", [main, profile_path.main], ids=["levers", "profile_path"])
def test_a_missing_artifact_is_named_before_anything_starts(
    tool: Callable[[list[str]], int], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        tool(["--artifact", str(tmp_path / "gone")])
    assert "gone/manifest.json: not found" in capsys.readouterr().err
