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
