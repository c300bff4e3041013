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


@pytest.mark.slow
def test_smollm2_is_dequantised_once_into_the_cache(tmp_path, caplog):
    from export.tokenizer_file import serving_tokenizer
    from marc.features import backbone_fingerprint

    with caplog.at_level("INFO", logger="marc.backbone"):
        fresh = load_backbone("smollm2", cache_dir=tmp_path)  # de-quantises the GGUF, writes the cache
        cached = load_backbone("smollm2", cache_dir=tmp_path)
    assert "de-quantising GGUF" in caplog.messages[0] and "de-quantised once" in caplog.messages[-1]
    (entry,) = tmp_path.iterdir()
    assert (entry / "model.safetensors").is_file() and not list(tmp_path.glob("*.partial*"))
    # The same weights, model class, config (so the same feature-cache keys), tokenizer and serving
    # tokenizer file as the GGUF gives.
    assert type(cached.model) is type(fresh.model)
    assert backbone_fingerprint(cached) == backbone_fingerprint(fresh)
    weights, again = fresh.model.state_dict(), cached.model.state_dict()
    assert weights.keys() == again.keys() and all(torch.equal(weights[k], again[k]) for k in weights)
    texts = ["red running shoes", "Crème brûlée 🍮 pour deux, 12 €", "x" * 300]
    assert fresh.tokenizer(texts).input_ids == cached.tokenizer(texts).input_ids
    assert (cached.tokenizer.pad_token_id, cached.tokenizer.padding_side) == (
        fresh.tokenizer.pad_token_id,
        "right",
    )
    assert serving_tokenizer(fresh.tokenizer, 64).to_str() == serving_tokenizer(cached.tokenizer, 64).to_str()
