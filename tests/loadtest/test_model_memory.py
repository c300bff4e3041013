"""`python -m loadtest.model_memory` on the tiny artifact: one `marc serve` per model count, RSS
read from each, and a reload's peak and after figures."""

from __future__ import annotations

import json
from pathlib import Path

from loadtest.model_memory import main


def test_model_memory_prints_rss_per_model_count_and_for_a_reload(
    tiny_artifact: Path, tmp_path: Path, capsys: object
) -> None:
    report = tmp_path / "memory.json"
    args = ["--artifact", str(tiny_artifact), "--copies", "2", "--reloads", "2", "--settle-seconds", "0"]
    assert main([*args, "--json", str(report)]) == 0
    numbers = json.loads(report.read_text())
    rows, reload = numbers["rows"], numbers["reload"]
    assert [row["models"] for row in rows] == [1, 2]
    assert all(row["rss_mb"] > 50 for row in rows) and rows[0]["added_mb"] is None
    assert rows[1]["added_mb"] == rows[1]["rss_mb"] - rows[0]["rss_mb"]
    assert reload["peak_mb"] >= reload["rss_before_mb"] > 50
    assert len(reload["rss_after_mb"]) == len(reload["seconds"]) == 2 and min(reload["seconds"]) > 0
    printed = capsys.readouterr().out  # type: ignore[attr-defined]
    assert "| 2 |" in printed and "peak" in printed
