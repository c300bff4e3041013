"""Smoke run of the headless benchmark on the tiny artifact (every row of the table, real servers,
real Redis, real ONNX Runtime; no timing assertions) and a check that the Locust scenarios load."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest.bench_report import QUESTIONS
from marc_serve.cli import main

ROWS = [
    "1. cold path",
    "1c. cold path, short texts",
    "1b. cold path, naive server",
    "2. hot path",
    "2b. hot path at half peak",
    "2c. hot path, /v1/embeddings",
    "2d. hot path, 2 workers",
    "2e. hot path, no response memo",
    "2f. hot path, items without ids",
    "3. truncation",
    "4. precision",
    "5. memory per cached item",
    "5b. artifact size",
    "7a. around the model, /v1/embed x 1 with ids",
    "7b. around the model, /v1/embed x 32 with ids",
    "7c. around the model, /v1/embeddings x 32",
]


@pytest.mark.slow
def test_quick_bench_produces_every_row(
    tiny_artifact: Path, tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, markdown = tmp_path / "bench.json", tmp_path / "bench.md"
    code = main(
        [
            "bench",
            "--artifact",
            str(tiny_artifact),
            "--checkpoint",
            str(tiny_checkpoint),
            "--quick",
            "--duration",
            "1",
            "--concurrency",
            "8",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--out",
            str(out),
            "--markdown",
            str(markdown),
        ]
    )
    assert code == 0
    report = json.loads(out.read_text())
    assert [row["row"] for row in report["rows"]] == ROWS
    for row in report["rows"]:
        assert math.isfinite(row["ratio"]) and row["ratio"] > 0, row
    printed = capsys.readouterr().out
    for name in ROWS:
        assert f"| {name} |" in printed
        assert f"| {name} |" in markdown.read_text()
    # One table per question: each row sits under its question's heading, every heading once.
    text = markdown.read_text()
    tables = {block.splitlines()[0]: block for block in text.split("#### ")[1:]}
    assert len(tables) == len({h for h, numbers in QUESTIONS for name in ROWS if name[0] in numbers})
    for name in ROWS:
        (heading,) = [h for h, numbers in QUESTIONS if name[0] in numbers]
        assert f"| {name} |" in tables[heading]

    (round_,) = report["details"]["rounds"]
    # The cold path really missed the cache and the hot path really hit it, on every item.
    for cold in ("service_cold", "service_cold_short"):
        assert round_[cold]["cache_hit_ratio"] == 0, cold
    for hot in ("service_hot", "service_hot_openai", "workers_hot", "no_memo_hot", "service_hot_no_ids"):
        assert round_[hot]["cache_hit_ratio"] == 1, hot
    for name, result in round_.items():
        if not name.startswith("limit"):
            assert result["ok"] > 0 and result["statuses"] == {"200": result["requests"]}, name
    memory = report["details"]["memory"]
    # Per-key MEMORY USAGE, not the used_memory difference: with the quick run's few keys the
    # latter moves by more than the keys cost (allocator noise), so it is reported, not asserted.
    # Values: the vector (dim 16) and the 4-byte token trailer.
    assert memory["items"] > 0 and memory["memory_usage_command_mean"] > memory["value_bytes"] == 16 * 4 + 4
    half = memory["float16"]  # the same texts cached with MARC_CACHE_DTYPE=float16
    assert half["items"] > 0 and half["memory_usage_command_mean"] > half["value_bytes"] == 16 * 2 + 4
    assert half["memory_usage_command_mean"] < memory["memory_usage_command_mean"]
    # The full-depth twin kept all 4 layers of the tiny backbone, with the same compressor shape.
    full = json.loads((Path(report["details"]["full_depth_artifact"]) / "manifest.json").read_text())
    assert (full["backbone"]["layer"], full["backbone"]["total_layers"], full["dim"]) == (4, 4, 16)
    # Around the model: the near-free twin has the artifact's tokenizer, k and max_length and one block
    # of width 8; its runs were counted, and what is left outside them is less than the whole.
    (twin,) = (tmp_path / "cache").glob("near-free-*/manifest.json")
    twin_manifest, manifest = (
        json.loads(twin.read_text()),
        json.loads((tiny_artifact / "manifest.json").read_text()),
    )
    assert (twin_manifest["backbone"]["layer"], twin_manifest["backbone"]["hidden_size"]) == (1, 8)
    assert twin_manifest["dim"] == manifest["dim"] and twin_manifest["max_length"] == manifest["max_length"]
    assert twin_manifest["tokenizer"]["sha256"] == manifest["tokenizer"]["sha256"]
    around = report["details"]["around_the_model"]
    assert [a["phase"] for a in around] == ["embed_1", "embed_32", "openai_32"]
    for phase in around:
        assert 0 < phase["model_us_per_item"] < phase["server_cpu_us_per_item"], phase
        assert phase["outside_us_per_item"] == pytest.approx(
            phase["server_cpu_us_per_item"] - phase["model_us_per_item"]
        )
        assert phase["bare_cpu_us_per_request"] > 0
        # The tokenizer alone, measured in the same round, in the same units.
        assert phase["tokenize_us_per_item"] > 0
        assert phase["tokenize_units"] == pytest.approx(
            phase["tokenize_us_per_item"] / phase["bare_cpu_us_per_request"]
        )


def test_bench_without_checkpoint_names_the_option(tmp_path: Path, tiny_artifact: Path) -> None:
    """An artifact whose recorded checkpoint is gone: a clear error, before any server starts."""
    copy = tmp_path / "artifact"
    copy.mkdir()
    for file in tiny_artifact.iterdir():
        (copy / file.name).write_bytes(file.read_bytes())
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["export"]["checkpoint"] = str(tmp_path / "gone")
    (copy / "manifest.json").write_text(json.dumps(manifest))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadtest.cli",
            "--artifact",
            str(copy),
            "--quick",
            "--out",
            str(tmp_path / "x.json"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "--checkpoint" in done.stderr and "gone" in done.stderr


def test_locustfile_lists_the_user_classes() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "locust", "-f", "loadtest/locustfile.py", "--list"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr
    assert set(done.stdout.split()) >= {"ColdUser", "HotUser", "LookupUser", "OpenAIUser"}
