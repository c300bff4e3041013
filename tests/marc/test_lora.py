"""LoRA on the top m kept layers fed with cached token states of layer L - m: the same forward output as
the full kept backbone with the same LoRA weights, training that changes only the top m layers and
lowers the loss, the token-state cache, and the measured cost of LoRA steps. Tiny random backbone."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from marc.backbone import load_backbone, pool
from marc.config import ModelConfig, TrainConfig
from marc.data import RecDataset, make_synthetic
from marc.features import token_states
from marc.train.cost import measure_lora_cost
from marc.train.loop import _item_major, train_marc
from marc.train.lora import lora_items, merge_lora
from marc_serve.cli import main

LAYER = 3  # of the tiny backbone's 4


@pytest.fixture(scope="module")
def data() -> RecDataset:
    return make_synthetic(num_items=60, num_users=30, interactions_per_user=16, seed=2)


def _config() -> ModelConfig:
    return ModelConfig(backbone="tiny", layer=LAYER, dim=8, max_length=24)


def _full_pooled(backbone, texts: list[str]) -> torch.Tensor:
    """The kept backbone run from the token ids (every block, LoRA wrappers included), pooled."""
    batch = backbone.tokenizer(texts, padding=True, truncation=True, max_length=24, return_tensors="pt")
    with torch.no_grad():
        hidden = backbone.model(**batch).last_hidden_state
    return pool(hidden, batch["attention_mask"])


@pytest.mark.parametrize("m", [1, 2, LAYER])
def test_cached_states_through_the_top_layers_equal_the_full_backbone(data: RecDataset, m: int) -> None:
    backbone = load_backbone("tiny")
    train = TrainConfig(mode="lora", lora_layers=m, lora_rank=4, lora_dropout=0.0)
    items = lora_items(backbone, data, _config(), train, torch.device("cpu"))
    # LoRA starts as the identity (B = 0): give it weights so the check sees the adapters.
    generator = torch.Generator().manual_seed(0)
    adapted = 0
    for name, param in items.backbone.named_parameters():
        if "lora_B" in name:
            param.data = torch.randn(param.shape, generator=generator) * 0.2
            adapted += 1
    assert adapted == 4 * m  # q, k, v, o of each of the top m layers
    items.backbone.eval()
    chosen = torch.arange(12)
    with torch.no_grad():
        cached = items.encode(chosen)[2]
    texts = [data.item_texts[i] for i in chosen.tolist()]
    full = _full_pooled(backbone, texts)  # backbone.model: truncated to LAYER, shares the LoRA blocks
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-5)

    # Merged into plain weights, the full kept backbone still gives the same states.
    delta = merge_lora(items, LAYER - m)
    assert {int(name.split(".")[1]) for name in delta} == set(range(LAYER - m, LAYER))
    torch.testing.assert_close(_full_pooled(backbone, texts), full, atol=1e-5, rtol=1e-5)
    for name, tensor in delta.items():
        assert torch.equal(backbone.model.state_dict()[name], tensor), name


def test_token_states_are_the_layer_output_and_cached(data: RecDataset, tmp_path) -> None:
    backbone = load_backbone("tiny")
    texts = data.item_texts[:7]
    states = token_states(backbone, texts, 2, max_length=24, cache_dir=tmp_path)
    batch = backbone.tokenizer(texts, padding=True, truncation=True, max_length=24, return_tensors="pt")
    with torch.no_grad():
        hidden = backbone.model(**batch, output_hidden_states=True).hidden_states[2]
    for i in range(len(texts)):
        length = int(batch["attention_mask"][i].sum())
        torch.testing.assert_close(torch.from_numpy(states.item(i)), hidden[i, :length], atol=1e-5, rtol=1e-5)
    (cached,) = tmp_path.glob("tokens-*-L2.npz")
    again = token_states(backbone, texts, 2, max_length=24, cache_dir=tmp_path)
    assert (again.values == states.values).all() and list(tmp_path.glob("*.npz")) == [cached]
    with pytest.raises(ValueError, match=r"layer must be in 0\.\.3"):
        token_states(backbone, texts, 4)


@pytest.mark.slow
def test_lora_training_changes_only_the_top_layers_and_lowers_the_loss(data: RecDataset) -> None:
    backbone = load_backbone("tiny")
    untouched = load_backbone("tiny").model.state_dict()
    train = TrainConfig(
        mode="lora", epochs=4, patience=4, batch_size=64, lr=1e-2, lora_lr=1e-2, lora_layers=1
    )
    result = train_marc(data, _config(), train, backbone=backbone)

    trained = backbone.model.state_dict()
    changed = {name for name, tensor in trained.items() if not torch.equal(tensor, untouched[name])}
    assert changed and all(name.startswith(f"layers.{LAYER - 1}.self_attn.") for name in changed)
    losses = [epoch["loss"] for epoch in result.history]
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert result.metrics["lora_layers"] == 1
    assert all(epoch["seconds"] >= epoch["train_seconds"] > 0 for epoch in result.history)
    assert result.metrics["epoch_seconds"] > 0


def test_lora_layers_beyond_the_kept_layers_are_refused(data: RecDataset) -> None:
    with pytest.raises(ValueError, match="cannot exceed the kept layers"):
        train_marc(data, _config(), TrainConfig(mode="lora", lora_layers=LAYER + 1))
    with pytest.raises(ValueError, match="lora_layers must be >= 0"):
        TrainConfig(mode="lora", lora_layers=-1)


@pytest.mark.slow
def test_measured_cost_extrapolates_timed_steps_to_an_epoch(data: RecDataset) -> None:
    train = TrainConfig(mode="lora", batch_size=32)
    cost = measure_lora_cost(data, _config(), train, steps=2)
    assert cost["lora_layers"] == LAYER and cost["steps_timed"] == 2 and len(cost["step_seconds"]) == 3
    assert cost["steps_per_epoch"] == math.ceil(len(data.train) / 32)
    assert cost["seconds_per_step"] > 0
    assert cost["epoch_seconds_estimate"] >= cost["seconds_per_step"] * cost["steps_per_epoch"]
    with pytest.raises(ValueError, match="steps must be >= 1"):
        measure_lora_cost(data, _config(), train, steps=0)


@pytest.mark.slow
def test_cli_measures_lora_steps_without_training(tmp_path, capsys) -> None:
    options = "--backbone tiny --layer 3 --dim 8 --items 60 --users 30 --max-length 24 --mode lora"
    out = tmp_path / "run"
    args = [*options.split(), "--lora-layers", "1", "--measure-steps", "1", "--out", str(out)]
    assert main(["train", *args, "--cache-dir", str(tmp_path / "cache")]) == 0
    printed = capsys.readouterr().out
    assert "LoRA on the top 1 of 3 kept layers" in printed and "s per step" in printed
    assert not out.exists()  # nothing trained, nothing written
    assert list((tmp_path / "cache").glob("tokens-*-L2.npz"))
    assert main(["train", *options.split(), "--mode", "frozen", "--measure-steps", "1"]) == 2
    assert "use it with --mode lora" in capsys.readouterr().err


@pytest.mark.slow
def test_warm_start_trains_c_and_a_first_and_lora_never_ends_below_it(data: RecDataset) -> None:
    train = TrainConfig(
        mode="lora", epochs=2, patience=2, batch_size=64, lora_lr=1e-2, lora_layers=1, warm_start_epochs=3
    )
    result = train_marc(data, _config(), train, backbone=load_backbone("tiny"))
    warm = result.metrics["warm_start"]
    assert 1 <= warm["epochs_run"] <= 3 and warm["seconds"] > 0
    # LoRA is early-stopped against the warm start: it keeps the start unless an epoch beats it.
    assert result.metrics["valid_auc"] >= warm["valid_auc"] - 1e-9
    assert 0 <= result.metrics["best_epoch"] <= 2 and len(result.history) >= 1


def test_item_batches_group_each_items_rows_in_a_new_item_order_each_epoch() -> None:
    items = np.array([3, 1, 3, 0, 2, 1, 3, 0, 2, 2, 1, 3])
    rng = np.random.default_rng(0)
    first, second = _item_major(items, rng), _item_major(items, rng)
    for order in (first, second):
        assert sorted(order) == list(range(len(items)))  # every row once
        seen = items[order]
        runs = [seen[0]] + [b for a, b in itertools.pairwise(seen) if a != b]
        assert len(runs) == len(set(seen.tolist()))  # one contiguous run per item
    assert not np.array_equal(items[first], items[second])


@pytest.mark.slow
def test_lora_with_item_batches_takes_the_warm_start_at_its_own_batch_size(data: RecDataset) -> None:
    train = TrainConfig(
        mode="lora",
        epochs=2,
        patience=2,
        batch_size=32,
        item_batches=True,
        lora_lr=1e-2,
        lora_layers=1,
        warm_start_epochs=2,
        warm_start_batch_size=len(data.train),  # one step per warm-start epoch
        lora_head=False,
        lora_keep_start=False,
    )
    result = train_marc(data, _config(), train, backbone=load_backbone("tiny"))
    assert result.metrics["steps_per_epoch"] == math.ceil(len(data.train) / 32)
    assert result.metrics["warm_start"]["epochs_run"] >= 1
    assert len(result.history) == 2  # both LoRA epochs ran (patience 2)
    # The best LoRA epoch is kept even if the warm start scored higher (lora_keep_start=False).
    assert result.metrics["best_epoch"] in (1, 2)
    assert result.metrics["valid_auc"] == pytest.approx(max(h["auc"] for h in result.history))
