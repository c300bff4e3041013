"""Features (pooled states + cache), the downstream evaluation harness and the layer probe."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from marc.backbone import load_backbone, pool
from marc.features import pooled_states

TEXTS = [
    "red running shoes by acme",
    "a",
    "premium leather jacket with a long description of many words",
    "blue wireless headphones",
    "wooden kitchen table",
]


@pytest.fixture(scope="module")
def tiny():
    return load_backbone("tiny")


def test_pooled_states_match_hidden_states(tiny):
    layers = [1, 3, tiny.num_layers]
    got = pooled_states(tiny, TEXTS, layers, batch_size=2)
    enc = tiny.tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = tiny.model(**enc, output_hidden_states=True).hidden_states
    for layer in layers:
        expected = pool(hidden[layer], enc["attention_mask"], "mean").numpy()
        assert got[layer].dtype == np.float32
        assert got[layer].shape == (len(TEXTS), tiny.hidden_size)
        np.testing.assert_allclose(got[layer], expected, atol=1e-5)
    # A mid-layer-only request runs a cut copy; the caller's backbone keeps all its blocks.
    mid = pooled_states(tiny, TEXTS, [2], pooling="last")[2]
    np.testing.assert_allclose(mid, pool(hidden[2], enc["attention_mask"], "last").numpy(), atol=1e-5)
    assert len(tiny.model.layers) == tiny.num_layers


def test_mid_layer_then_full_requests_on_one_backbone_match_a_fresh_model():
    # A mid-layer request runs a parameter-sharing cut copy of the model. Regression: with
    # output_hidden_states on that copy, the caller's model then returned wrong hidden states.
    from marc.data import make_synthetic

    texts = make_synthetic(num_items=64, num_users=20).item_texts
    backbone = load_backbone("tiny:3")
    mid = pooled_states(backbone, texts, [2], batch_size=64)[2]
    both = pooled_states(backbone, texts, [1, 4], batch_size=64)
    enc = backbone.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        after = backbone.model(**enc, output_hidden_states=True).hidden_states
        expected = load_backbone("tiny:3").model(**enc, output_hidden_states=True).hidden_states
    for layer, got in ((2, mid), (1, both[1]), (4, both[4])):
        reference = pool(expected[layer], enc["attention_mask"], "mean").numpy()
        np.testing.assert_allclose(got, reference, atol=1e-5, err_msg=f"layer {layer}")
    for layer in (1, 2, 4):
        torch.testing.assert_close(after[layer], expected[layer], atol=1e-5, rtol=0)


def test_pooled_states_cache_returns_same_arrays_without_recomputing(tiny, tmp_path: Path, monkeypatch):
    first = pooled_states(tiny, TEXTS, [1, 4], cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.npy"))) == 2

    def no_forward(*args, **kwargs):
        raise AssertionError("the backbone ran although every layer was cached")

    monkeypatch.setattr("marc.features._compute", no_forward)
    second = pooled_states(tiny, TEXTS, [4, 1], cache_dir=tmp_path)
    assert list(second) == [4, 1]
    for layer in (1, 4):
        np.testing.assert_array_equal(first[layer], second[layer])
    # Different texts or settings are a different key, so they miss (and would compute).
    with pytest.raises(AssertionError, match="backbone ran"):
        pooled_states(tiny, TEXTS, [1], max_length=8, cache_dir=tmp_path)


def test_pooled_states_rejects_bad_layers(tiny):
    with pytest.raises(ValueError, match=r"layers 1\.\.4"):
        pooled_states(tiny, TEXTS, [5])


@pytest.fixture(scope="module")
def small_data():
    from marc.data import make_synthetic

    return make_synthetic(num_items=600, num_users=400)


def test_evaluate_reports_warm_and_cold_metrics(small_data):
    from marc.evaluate import evaluate_vectors

    vectors = np.random.default_rng(0).normal(size=(small_data.num_items, 12)).astype(np.float32)
    result = evaluate_vectors(small_data, vectors, seed=0)
    for key in ("auc_all", "auc_warm", "auc_cold", "valid_auc", "valid_auc_cold"):
        assert 0.0 < result[key] < 1.0, key
    for key in ("logloss_all", "logloss_warm", "logloss_cold"):
        assert 0.0 < result[key] < 2.0, key
    assert (result["bytes_per_item_fp32"], result["bytes_per_item_fp16"]) == (48, 24)
    assert evaluate_vectors(small_data, vectors, seed=0)["auc_cold"] == result["auc_cold"]  # seeded
    assert evaluate_vectors(small_data, None)["bytes_per_item_fp32"] == 0
    with pytest.raises(ValueError, match=r"num_items=600"):
        evaluate_vectors(small_data, vectors[:10])


@pytest.fixture(scope="module")
def marc_run(small_data, tiny, tmp_path_factory):
    """MARC (C + A + bottleneck) trained in frozen mode on the tiny backbone's layer-2 states."""
    from marc.config import ModelConfig, TrainConfig
    from marc.train.loop import train_marc

    out = tmp_path_factory.mktemp("marc-ckpt")
    states = pooled_states(tiny, small_data.item_texts, [2])[2]
    config = ModelConfig(backbone="tiny", layer=2, dim=16)
    return train_marc(
        small_data, config, TrainConfig(seed=0), pooled=states, out_dir=out, data_spec="synthetic"
    )


@pytest.mark.slow
def test_trained_marc_beats_random_and_ids_only_on_cold_items(small_data, marc_run, tiny):
    from marc.baselines import checkpoint_vectors
    from marc.evaluate import evaluate_vectors

    # The checkpoint rebuilds the same served vectors as training produced.
    reloaded = checkpoint_vectors(marc_run.checkpoint_dir, small_data.item_texts)
    np.testing.assert_allclose(reloaded, marc_run.item_vectors(), atol=1e-4)
    # Frozen checkpoint + the full backbone (the fast path `marc evaluate --baselines` takes): same z.
    via_full = checkpoint_vectors(marc_run.checkpoint_dir, small_data.item_texts, backbone=tiny)
    np.testing.assert_allclose(via_full, reloaded, atol=1e-4)

    marc = evaluate_vectors(small_data, reloaded, seed=0)
    ids_only = evaluate_vectors(small_data, None, seed=0)
    assert marc["auc_all"] > 0.62  # well above random (0.5)
    # Cold items have no trained id embedding: only the text vector can tell them apart.
    assert marc["auc_cold"] > ids_only["auc_cold"] + 0.01


@pytest.mark.slow
def test_evaluate_cli_scores_checkpoint_and_baselines(marc_run, tmp_path: Path, capsys):
    import json

    from marc_serve.cli import main

    out = tmp_path / "report.json"
    args = ["evaluate", "--checkpoint", str(marc_run.checkpoint_dir), "--items", "600", "--users", "400"]
    assert main([*args, "--baselines", "--out", str(out), "--cache-dir", str(tmp_path / "cache")]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [row["method"] for row in rows] == ["ids", "full", "pca", "linear", "pca", "marc"]
    assert [row["layer"] for row in rows] == [None, 4, 4, 4, 2, 2]
    assert [row["dim"] for row in rows] == [0, 64, 16, 16, 16, 16]
    assert all(0.0 < row["auc_cold"] < 1.0 for row in rows)
    printed = capsys.readouterr().out
    assert "| ids only |" in printed and "| MARC L2 |" in printed


def test_probe_layers_always_include_the_final_layer():
    from marc.probe import probe_layers

    assert probe_layers(30, every=3) == list(range(3, 31, 3))
    assert probe_layers(30, every=4) == [4, 8, 12, 16, 20, 24, 28, 30]
    assert probe_layers(30, layers=[15, 5]) == [5, 15, 30]
    with pytest.raises(ValueError, match=r"1\.\.30"):
        probe_layers(30, layers=[0, 31])


def test_probe_cli_writes_json_and_png_with_one_point_per_layer(tmp_path: Path, capsys):
    import json

    from marc_serve.cli import main

    out = tmp_path / "probe"
    args = ["probe", "--backbone", "tiny", "--items", "300", "--users", "200", "--dim", "8", "--every", "2"]
    assert main([*args, "--out", str(out), "--cache-dir", str(tmp_path / "cache")]) == 0
    report = json.loads((out / "probe.json").read_text())
    assert [record["layer"] for record in report["records"]] == [2, 4]
    assert report["final_layer"] == 4 and report["best_layer"] in (2, 4)
    for record in report["records"]:
        assert record["pca"]["dim"] == 8 and 0.0 < record["pca"]["auc_cold"] < 1.0
    assert (out / "probe.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"best layer: {report['best_layer']} of 4" in capsys.readouterr().out
