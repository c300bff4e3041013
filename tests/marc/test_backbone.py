import copy

import pytest
import torch

from marc.backbone import TinySpec, load_backbone, pool, truncate


@pytest.fixture(scope="module")
def tiny():
    return load_backbone("tiny")


def test_tiny_is_deterministic_by_seed():
    a, b, c = load_backbone("tiny:1"), load_backbone("tiny:1"), load_backbone("tiny:2")
    wa, wb, wc = (m.model.embed_tokens.weight for m in (a, b, c))
    assert torch.equal(wa, wb)
    assert not torch.equal(wa, wc)
    assert a.tokenizer("red shoes").input_ids == b.tokenizer("red shoes").input_ids


@pytest.mark.parametrize("layer", [1, 2, 3, 4])
def test_truncation_equals_hidden_state(tiny, layer):
    enc = tiny.tokenizer(
        ["red running shoes by acme", "a", "premium leather jacket"], padding=True, return_tensors="pt"
    )
    full = copy.deepcopy(tiny.model)
    cut = truncate(copy.deepcopy(tiny.model), layer)
    with torch.no_grad():
        expected = full(**enc, output_hidden_states=True).hidden_states[layer]
        got = cut(**enc).last_hidden_state
    assert len(cut.layers) == layer
    assert torch.allclose(got, expected, atol=1e-5)


def test_truncation_drops_parameters(tiny):
    full_params = sum(p.numel() for p in tiny.model.parameters())
    cut = truncate(copy.deepcopy(tiny.model), 1)
    assert sum(p.numel() for p in cut.parameters()) < full_params


def test_truncation_rejects_bad_layer(tiny):
    with pytest.raises(ValueError, match=r"layer must be in 1\.\.4"):
        truncate(copy.deepcopy(tiny.model), 5)
    with pytest.raises(ValueError):
        truncate(copy.deepcopy(tiny.model), 0)


def test_pooling_ignores_padding(tiny):
    text = "blue wireless headphones"
    alone = tiny.tokenizer([text], return_tensors="pt")
    padded = tiny.tokenizer(
        [text, text + " with a very long extra description of many words"], padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        h1 = tiny.model(**alone).last_hidden_state
        h2 = tiny.model(**padded).last_hidden_state
    for mode in ("mean", "last"):
        a = pool(h1, alone["attention_mask"], mode)[0]
        b = pool(h2, padded["attention_mask"], mode)[0]
        assert torch.allclose(a, b, atol=1e-5), mode


def test_tiny_spec_shape():
    b = load_backbone("tiny", TinySpec(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64))
    assert (b.num_layers, b.hidden_size) == (2, 32)


def test_unknown_source_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        load_backbone(str(tmp_path / "nope"))


@pytest.mark.slow
def test_smollm2_gguf_truncates_and_runs():
    b = load_backbone("smollm2")
    assert (b.num_layers, b.hidden_size) == (30, 576)
    enc = b.tokenizer(["red running shoes", "a"], padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = b.model(**enc, output_hidden_states=True).hidden_states[15]
        cut = truncate(b.model, 15)
        got = cut(**enc).last_hidden_state
    assert len(cut.layers) == 15
    assert got.shape == (2, enc["input_ids"].shape[1], 576)
    assert torch.allclose(got, expected, atol=1e-5)
