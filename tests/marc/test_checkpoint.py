import torch

from marc.backbone import TinySpec
from marc.checkpoint import load_checkpoint, save_checkpoint
from marc.config import ModelConfig
from marc.modules import Compressor


def test_round_trip_gives_identical_vectors(tmp_path):
    config = ModelConfig(backbone="tiny:3", tiny=TinySpec(seed=3), layer=2, dim=8, max_length=16)
    torch.manual_seed(0)
    compressor = Compressor(config.tiny.hidden_size, config.dim)
    save_checkpoint(tmp_path, config, compressor, metrics={"valid_auc": 0.7})
    first, second = load_checkpoint(tmp_path), load_checkpoint(tmp_path)
    assert first.config == config
    assert first.metrics == {"valid_auc": 0.7}
    assert len(first.encoder.backbone.layers) == 2
    enc = first.tokenizer(["red shoes", "a blue leather jacket"], padding=True, return_tensors="pt")
    with torch.no_grad():
        z1, z2 = first.encoder(**enc), second.encoder(**enc)
    assert z1.shape == (2, 8)
    assert torch.equal(z1, z2)
