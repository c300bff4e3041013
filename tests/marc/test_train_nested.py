"""Nested (Matryoshka) training: the objective on every prefix z[:d], each prefix's AUC in the
metrics, the prefixes in the checkpoint and the exported manifest (and its fingerprint), and the
`marc train --nested-dims` options."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from artifact.loader import load_artifact
from artifact.manifest import read_manifest
from export.onnx_export import export_checkpoint
from marc.checkpoint import read_config
from marc.config import ModelConfig, TrainConfig
from marc.data import RecDataset
from marc.losses import LossParts, marc_loss, nested_loss
from marc.modules import PrefixHeads, TaskAdapter
from marc.train.loop import train_marc
from marc_serve.cli import main
from tests.marc.conftest import TRAIN_LAYER

LAYER = TRAIN_LAYER
NESTED = [4, 8, 16]


def nested_config(**overrides: object) -> ModelConfig:
    values = {"backbone": "tiny", "layer": LAYER, "dim": 16, "max_length": 32, "nested_dims": NESTED}
    return ModelConfig(**{**values, **overrides})  # type: ignore[arg-type]


def test_nested_loss_is_the_equal_weight_mean_and_one_prefix_is_unchanged() -> None:
    parts = [
        marc_loss(torch.tensor(b), torch.tensor(k), torch.tensor(0.0), beta=0.5, recon_weight=1.0)
        for b, k in ((0.7, 2.0), (0.5, 4.0), (0.3, 8.0))
    ]
    mean = nested_loss(parts)
    assert float(mean.bce) == pytest.approx(0.5) and float(mean.kl) == pytest.approx(14 / 3)
    assert float(mean.total) == pytest.approx(0.5 + 0.5 * 14 / 3)
    single: LossParts = parts[0]
    assert nested_loss([single]) is single


def test_each_prefix_head_sees_only_its_prefix() -> None:
    heads = PrefixHeads({d: TaskAdapter(d, num_users=5, hidden=8, layers=2) for d in (2, 4)})
    z = torch.randn(3, 4, requires_grad=True)
    history = torch.randn(3, 2, 4)
    logits = heads(z, torch.tensor([0, 1, 2]), history, torch.ones(3, 2, dtype=torch.bool), dim=2)
    logits.sum().backward()
    assert z.grad is not None and z.grad[:, 2:].abs().sum() == 0 and z.grad[:, :2].abs().sum() > 0
    assert heads.dims == [2, 4]


@pytest.mark.parametrize("dims", [[8, 4, 16], [4, 4, 16], [0, 16], [4, 8]])
def test_bad_nested_dims_are_refused(dims: list[int]) -> None:
    with pytest.raises(ValueError, match="nested_dims"):
        nested_config(nested_dims=dims)


def test_nested_training_scores_every_prefix_and_the_artifact_records_them(
    data: RecDataset, pooled: np.ndarray, tmp_path: Path
) -> None:
    result = train_marc(data, nested_config(), TrainConfig(epochs=8), pooled=pooled, out_dir=tmp_path / "run")
    nested = result.metrics["nested"]
    assert sorted(nested, key=int) == ["4", "8", "16"]
    for prefix in nested.values():
        assert prefix["valid_auc"] > 0.55 and 0 < prefix["test_auc"] < 1
    # The full-k head is the model's head: its AUC is the one reported as valid_auc.
    assert nested["16"]["valid_auc"] == pytest.approx(result.metrics["valid_auc"])
    # Early stopping watched the mean over the prefixes.
    best = result.history[result.metrics["best_epoch"] - 1]
    assert best["auc_prefix_mean"] == max(h["auc_prefix_mean"] for h in result.history)
    assert read_config(tmp_path / "run")[0].nested_dims == NESTED
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["nested"]["4"]["valid_auc"] > 0.55

    manifest = export_checkpoint(tmp_path / "run", tmp_path / "artifact")
    assert manifest.nested_dims == NESTED and manifest.dimensions == NESTED
    assert load_artifact(tmp_path / "artifact").dimensions == NESTED
    # The fingerprint covers the prefixes: editing them in the manifest is caught by the loader.
    path = tmp_path / "artifact" / "manifest.json"
    raw = json.loads(path.read_text())
    raw["nested_dims"] = [8, 16]
    path.write_text(json.dumps(raw))
    with pytest.raises(Exception, match="fingerprint"):
        load_artifact(tmp_path / "artifact")
    raw["nested_dims"] = [8, 32]
    path.write_text(json.dumps(raw))
    with pytest.raises(Exception, match="nested_dims"):
        read_manifest(tmp_path / "artifact")


def test_a_run_without_nesting_has_no_prefix_metrics(data: RecDataset, pooled: np.ndarray) -> None:
    result = train_marc(data, nested_config(nested_dims=[]), TrainConfig(epochs=1), pooled=pooled)
    assert "nested" not in result.metrics and "auc_prefix_mean" not in result.history[0]


def test_cli_nested_dims_define_k_or_must_end_at_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    options = "--backbone tiny --layer 2 --items 120 --users 60 --epochs 1 --max-length 32".split()
    options += ["--cache-dir", str(tmp_path / "cache")]
    assert main(["train", *options, "--nested-dims", "4,8", "--out", str(tmp_path / "a")]) == 0
    printed = capsys.readouterr().out
    assert "k=8, nested prefixes [4, 8]" in printed and "prefix z[:4]: validation AUC" in printed
    assert read_config(tmp_path / "a")[0].dim == 8
    assert main(["train", *options, "--nested-dims", "4,8", "--dim", "16", "--out", str(tmp_path / "b")]) == 2
    assert "--nested-dims must end at --dim 16" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", *options, "--nested-dims", "8,4"])
    assert "ascending" in capsys.readouterr().err
