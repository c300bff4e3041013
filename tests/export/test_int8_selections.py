"""Recorded int8 selections (export/int8_selections.py): reused for the same graph and calibration set,
searched again otherwise, and the recorded default still matching the calibration set it was made with."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import export.quantize as quantize
from artifact.manifest import read_manifest
from export.int8_selections import SELECTIONS_FILE, main, read_selections, record_selection

COMPRESSOR = ["/compressor/mean/Gemm", "/compressor/mean/Gemm_MatMul"]


def _between_target(model: Path, tokenizer: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A target between all-int8 and fp32, so a selection keeps some nodes fp32 and quantises others."""
    report = quantize.quantize_int8(model, tmp_path / "probe.onnx", tokenizer, selections=None)
    monkeypatch.setattr(quantize, "TARGET_MEAN_COSINE", (1 + report["all_int8_calibration_mean_cosine"]) / 2)


def _no_search(*args: Any) -> dict[str, Any]:
    raise AssertionError("the search ran although a recorded selection applies")


def test_a_recorded_selection_is_reused_for_the_same_graph_and_calibration_set(
    export_tiny: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    artifact = export_tiny()
    model, tokenizer, selections = artifact / "model.onnx", artifact / "tokenizer.json", tmp_path / "s.json"
    _between_target(model, tokenizer, tmp_path, monkeypatch)
    searched = quantize.quantize_int8(model, tmp_path / "searched.onnx", tokenizer, selections)
    assert searched["selection"] == "searched" and not selections.exists()
    assert set(searched["fp32_nodes"]) > set(COMPRESSOR)  # some backbone nodes kept fp32

    record_selection(selections, searched, "tiny", "test CPU")
    monkeypatch.setattr(quantize, "_search", _no_search)
    reused = quantize.quantize_int8(model, tmp_path / "reused.onnx", tokenizer, selections)
    assert reused["selection"] == "recorded (s.json)"
    assert reused["fp32_nodes"] == searched["fp32_nodes"]
    assert reused["calibration_mean_cosine"] >= quantize.TARGET_MEAN_COSINE
    # The same int8 file, hence the same int8 fingerprint, as the search wrote.
    assert (tmp_path / "reused.onnx").read_bytes() == (tmp_path / "searched.onnx").read_bytes()

    # Recording again replaces the entry of that graph and calibration set.
    record_selection(selections, searched, "tiny", "test CPU")
    assert len(read_selections(selections)) == 1
    with pytest.raises(ValueError, match="only a searched selection"):
        record_selection(selections, reused, "tiny", "test CPU")


def test_the_search_runs_for_another_graph_calibration_set_or_a_missed_target(
    export_tiny: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    artifact = export_tiny()
    model, tokenizer, selections = artifact / "model.onnx", artifact / "tokenizer.json", tmp_path / "s.json"
    _between_target(model, tokenizer, tmp_path, monkeypatch)
    searched = quantize.quantize_int8(model, tmp_path / "a.onnx", tokenizer, selections)
    # A recorded selection that quantises every node misses the target on these texts: searched again.
    record_selection(selections, {**searched, "fp32_nodes": COMPRESSOR}, "tiny", "test CPU")
    again = quantize.quantize_int8(model, tmp_path / "b.onnx", tokenizer, selections)
    assert again["selection"] == "searched" and again["fp32_nodes"] == searched["fp32_nodes"]
    assert again["calibration_mean_cosine"] >= quantize.TARGET_MEAN_COSINE

    record_selection(selections, searched, "tiny", "test CPU")
    other = export_tiny(compressor_seed=1)  # another graph
    report = quantize.quantize_int8(
        other / "model.onnx", tmp_path / "c.onnx", other / "tokenizer.json", selections
    )
    assert report["selection"] == "searched" and report["graph_sha256"] != searched["graph_sha256"]
    monkeypatch.setattr(quantize, "CALIBRATION_TEXTS", quantize.CALIBRATION_TEXTS[:8])  # another set
    report = quantize.quantize_int8(model, tmp_path / "d.onnx", tokenizer, selections)
    assert report["selection"] == "searched"
    assert report["calibration_fingerprint"] != searched["calibration_fingerprint"]


def test_the_command_records_an_artifacts_searched_selection(
    tiny_artifact: Path, export_tiny: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    selections = tmp_path / "s.json"
    assert main([str(tiny_artifact), "--file", str(selections)]) == 0
    (entry,) = read_selections(selections)
    manifest = read_manifest(tiny_artifact)
    assert entry["graph_sha256"] == manifest.variants["fp32"].sha256
    assert entry["fp32_nodes"] == manifest.export["int8"]["fp32_nodes"] and entry["model"] == manifest.name
    assert "recorded in" in capsys.readouterr().out

    with pytest.raises(SystemExit) as refused:  # an artifact without int8
        main([str(export_tiny()), "--file", str(selections)])
    assert refused.value.code != 0


@pytest.mark.slow
def test_the_recorded_default_matches_the_calibration_set_it_was_searched_with(tmp_path: Path) -> None:
    """`make serve` skips the search only while the default's entry matches the current calibration
    texts, target and method: a change to any of them must come with a new entry (the module's doc)."""
    from export.tokenizer_file import write_tokenizer
    from marc.backbone import load_backbone

    (entry,) = [
        e for e in json.loads(SELECTIONS_FILE.read_text())["selections"] if e["model"] == "smollm2-l21-k64"
    ]
    write_tokenizer(load_backbone("smollm2").tokenizer, 64, tmp_path / "tokenizer.json")
    feed = quantize._calibration_feed(tmp_path / "tokenizer.json")
    assert entry["calibration_fingerprint"] == quantize.calibration_fingerprint(feed)
    assert set(COMPRESSOR) <= set(entry["fp32_nodes"])
