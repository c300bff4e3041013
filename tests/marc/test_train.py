"""MARC training: modules, losses, frozen and LoRA training, checkpoints and the `marc train` CLI.
Everything runs on the tiny random backbone and small synthetic datasets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from marc.backbone import load_backbone
from marc.checkpoint import load_checkpoint
from marc.config import ModelConfig, TrainConfig
from marc.data import RecDataset, make_synthetic
from marc.losses import Reconstruction, kl_to_standard_normal, marc_loss, sample_z, task_bce
from marc.modules import Compressor, DotProductHead, TaskAdapter
from marc.train.loop import train_marc, user_histories
from marc_serve.cli import build_parser, main
from tests.marc.conftest import TRAIN_LAYER

LAYER = TRAIN_LAYER


def tiny_config(**overrides: object) -> ModelConfig:
    return ModelConfig(**{"backbone": "tiny", "layer": LAYER, "dim": 16, "max_length": 32, **overrides})


def test_compressor_and_adapter_shapes() -> None:
    z = torch.randn(5, 16)
    mean, logvar = Compressor(64, 16)(torch.randn(5, 64))
    assert mean.shape == logvar.shape == (5, 16)
    users = torch.tensor([0, 1, 2, 3, 9])
    history = torch.randn(5, 7, 16)
    mask = torch.rand(5, 7) > 0.5
    mask[0] = False  # a user without history must still get a finite score
    for head in (TaskAdapter(16, num_users=10, hidden=32, layers=3), DotProductHead(16, num_users=10)):
        logits = head(z, users, history, mask)
        assert logits.shape == (5,)
        assert torch.isfinite(logits).all()


def test_adapter_depth_is_configurable() -> None:
    deep = TaskAdapter(16, num_users=4, hidden=32, layers=3)
    linear = TaskAdapter(16, num_users=4, hidden=32, layers=1)
    assert sum(isinstance(m, nn.Linear) for m in deep.mlp.modules()) == 3
    assert sum(isinstance(m, nn.GELU) for m in deep.mlp.modules()) == 2
    # layers=1: A is a single linear layer, the same structure as C (for the ablation).
    assert [type(m) for m in linear.mlp] == [nn.Linear]
    with pytest.raises(ValueError, match="adapter_layers"):
        TaskAdapter(16, num_users=4, layers=0)


def test_kl_is_zero_only_at_the_prior() -> None:
    zeros = torch.zeros(8, 4)
    assert kl_to_standard_normal(zeros, zeros).item() == 0.0
    # mean 1, unit variance: 0.5 per dimension, summed over 4 dims.
    assert kl_to_standard_normal(torch.ones(8, 4), zeros).item() == pytest.approx(2.0)
    assert kl_to_standard_normal(zeros, torch.full((8, 4), -1.0)).item() > 0
    assert kl_to_standard_normal(zeros, torch.full((8, 4), 1.0)).item() > 0


def test_total_loss_composition() -> None:
    logits, labels = torch.tensor([2.0, -1.0]), torch.tensor([1.0, 0.0])
    bce = task_bce(logits, labels)
    expected_bce = -(torch.log(torch.sigmoid(logits[0])) + torch.log(1 - torch.sigmoid(logits[1]))) / 2
    assert bce.item() == pytest.approx(expected_bce.item())
    parts = marc_loss(bce, torch.tensor(3.0), torch.tensor(0.5), beta=0.1, recon_weight=2.0)
    assert parts.total.item() == pytest.approx(bce.item() + 0.3 + 1.0)


def test_reconstruction_target_is_stop_gradient() -> None:
    pooled = torch.randn(4, 32, requires_grad=True)
    z = torch.randn(4, 8, requires_grad=True)
    recon = Reconstruction(8, 32)
    recon(z, pooled).backward()
    assert pooled.grad is None
    assert z.grad is not None and recon.decoder.weight.grad is not None


def test_sampling_uses_the_variance() -> None:
    mean = torch.randn(1000, 4)
    assert torch.allclose(sample_z(mean, torch.full_like(mean, -30.0)), mean, atol=1e-5)
    assert sample_z(mean, torch.zeros_like(mean)).sub(mean).std().item() == pytest.approx(1.0, abs=0.1)


def test_histories_hold_only_positive_train_items(data: RecDataset) -> None:
    histories = user_histories(data, history_len=5, seed=0)
    positives = set(
        zip(
            data.train.users[data.train.labels > 0].tolist(),
            data.train.items[data.train.labels > 0].tolist(),
            strict=True,
        )
    )
    assert histories.shape == (data.num_users, 5)
    for user, row in enumerate(histories):
        assert all((user, item) in positives for item in row[row >= 0].tolist())
    assert not data.cold_items[histories[histories >= 0]].any()


def test_kl_term_shrinks_z_variance(data: RecDataset, pooled: np.ndarray) -> None:
    variances = []
    for beta in (1e-4, 1.0):
        result = train_marc(data, tiny_config(beta=beta), TrainConfig(epochs=6, patience=10), pooled=pooled)
        variances.append(result.item_vectors().var(axis=0).mean())
    assert variances[1] < 0.5 * variances[0]


def test_frozen_training_beats_random_and_writes_checkpoint(
    data: RecDataset, pooled: np.ndarray, tmp_path
) -> None:
    result = train_marc(data, tiny_config(), TrainConfig(epochs=12), pooled=pooled, out_dir=tmp_path)
    m = result.metrics
    assert m["valid_auc"] > 0.6
    assert m["test_auc"] > 0.6
    assert m["valid_auc_cold"] is not None and m["valid_auc_cold"] > 0.55
    # The best epoch's weights are the ones returned.
    assert m["valid_auc"] == pytest.approx(max(h["auc"] for h in result.history))
    assert result.history[m["best_epoch"] - 1]["auc"] == pytest.approx(m["valid_auc"])
    assert result.item_vectors().shape == (data.num_items, 16)

    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["train"]["mode"] == "frozen"
    assert saved["data"]["num_items"] == data.num_items
    assert json.loads((tmp_path / "metrics.json").read_text())["valid_auc"] == pytest.approx(m["valid_auc"])
    assert not (tmp_path / "backbone_delta.safetensors").exists()
    # The checkpoint's encoder (truncated backbone + C) serves the vectors training produced.
    checkpoint = load_checkpoint(tmp_path)
    batch = checkpoint.tokenizer(
        data.item_texts[:6], padding=True, truncation=True, max_length=32, return_tensors="pt"
    )
    with torch.no_grad():
        served = checkpoint.encoder(**batch).numpy()
    np.testing.assert_allclose(served, result.item_vectors()[:6], atol=1e-4)


@pytest.mark.parametrize(
    ("config", "train"),
    [
        (tiny_config(), TrainConfig(epochs=1, use_adapter=False)),
        (tiny_config(adapter_layers=1, compressor_hidden=8, recon_weight=1.0), TrainConfig(epochs=1)),
    ],
    ids=["without-A", "A-like-C-with-recon"],
)
def test_ablation_configurations_train(data: RecDataset, pooled: np.ndarray, config, train) -> None:
    result = train_marc(data, config, train, pooled=pooled)
    assert 0.0 < result.metrics["valid_auc"] < 1.0
    assert result.history[0]["recon"] > 0 if config.recon_weight else result.history[0]["recon"] == 0


def test_layer_out_of_range_is_rejected(data: RecDataset) -> None:
    with pytest.raises(ValueError, match=r"layer must be in 1\.\.4"):
        train_marc(data, tiny_config(layer=9), TrainConfig(epochs=1))


@pytest.mark.slow
def test_lora_changes_backbone_and_checkpoint_reproduces_z(tmp_path) -> None:
    data = make_synthetic(num_items=40, num_users=20, interactions_per_user=10, seed=1)
    backbone = load_backbone("tiny")
    untouched = load_backbone("tiny").model.state_dict()
    train = TrainConfig(mode="lora", epochs=1, batch_size=64, lora_lr=1e-2, lora_rank=4)
    result = train_marc(data, tiny_config(), train, backbone=backbone, out_dir=tmp_path)

    assert (tmp_path / "backbone_delta.safetensors").is_file()
    trained = backbone.model.state_dict()
    changed = [name for name, tensor in trained.items() if not torch.equal(tensor, untouched[name])]
    assert changed and all("self_attn" in name for name in changed)
    assert {int(name.split(".")[1]) for name in changed} == set(range(LAYER))  # only the kept layers

    checkpoint = load_checkpoint(tmp_path)
    assert result.encoder is not None
    batch = checkpoint.tokenizer(
        data.item_texts[:5], padding=True, truncation=True, max_length=32, return_tensors="pt"
    )
    with torch.no_grad():
        reloaded, in_memory = checkpoint.encoder(**batch), result.encoder(**batch)
    assert torch.equal(reloaded, in_memory)
    np.testing.assert_allclose(reloaded.numpy(), result.item_vectors()[:5], atol=1e-5)


def test_cli_help_explains_every_option(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["train", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    options = "--backbone --layer --dim --data --mode --epochs --beta --recon-weight --pooling --max-length"
    options += " --batch-size --lr --seed --patience --items --users --cache-dir --out --no-adapter"
    for option in options.split():
        assert option in text, option


def test_cli_defaults_match_the_configs() -> None:
    args = build_parser().parse_args(["train"])
    model, train = ModelConfig(), TrainConfig()
    model_fields = "pooling max_length compressor_hidden adapter_hidden adapter_layers beta recon_weight"
    for name in model_fields.split():
        assert getattr(args, name) == getattr(model, name), name
    # --dim defaults to the largest --nested-dims, else to ModelConfig's k (no nesting by default).
    assert args.dim is None and args.nested_dims is None and model.dim == 64 and model.nested_dims == []
    train_fields = "mode epochs batch_size lr weight_decay seed patience history_len"
    train_fields += " lora_rank lora_alpha lora_dropout lora_lr device"
    for name in train_fields.split():
        assert getattr(args, name) == getattr(train, name), name


def test_cli_trains_and_writes_checkpoint(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    options = "--backbone tiny --layer 2 --dim 8 --items 120 --users 60 --epochs 2 --max-length 32"
    code = main(["train", *options.split(), "--cache-dir", str(tmp_path / "cache"), "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "validation AUC" in printed and "cold items" in printed
    assert str(out) in printed
    assert load_checkpoint(out).config.dim == 8
    assert list((tmp_path / "cache").glob("*.npy"))  # pooled states were cached for the next run


def test_cli_reports_bad_input(tmp_path, capsys) -> None:
    options = "--backbone tiny --layer 7 --items 50 --users 20"
    code = main(["train", *options.split(), "--out", str(tmp_path / "x")])
    assert code == 2
    assert "layer must be in 1..4" in capsys.readouterr().err


def test_pca_initialised_c_starts_at_the_whitened_principal_components(pooled: np.ndarray) -> None:
    states = torch.as_tensor(pooled, dtype=torch.float32)
    compressor = Compressor(states.shape[1], 4)
    compressor.set_input_stats(states)
    compressor.init_from_pca(states)
    with torch.no_grad():
        z = compressor(states)[0].double()
    # Uncorrelated, unit variance, centred: the whitened PCA scores.
    np.testing.assert_allclose(np.cov(z.numpy().T), np.eye(4), atol=1e-3)
    np.testing.assert_allclose(z.mean(0).numpy(), 0.0, atol=1e-4)
    with pytest.raises(ValueError, match="linear C"):
        Compressor(states.shape[1], 4, hidden=8).init_from_pca(states)


def test_pca_init_and_gauc_stopping_train_and_are_validated(data: RecDataset, pooled: np.ndarray) -> None:
    train = TrainConfig(epochs=2, compressor_init="pca", stop_metric="gauc_cold")
    result = train_marc(data, tiny_config(), train, pooled=pooled)
    best = result.metrics["best_epoch"]
    assert result.history[best - 1]["gauc_cold"] == pytest.approx(max(h["gauc_cold"] for h in result.history))
    with pytest.raises(ValueError, match="stop_metric"):
        TrainConfig(stop_metric="loss")
    with pytest.raises(ValueError, match="frozen mode"):
        TrainConfig(mode="lora", compressor_init="pca")
