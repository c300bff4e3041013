"""Export: ONNX artifact from a checkpoint, parity, quantised variants, fingerprints, the command."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from tokenizers import Tokenizer

from artifact.loader import load_artifact
from artifact.manifest import read_manifest
from export.onnx_export import export_checkpoint
from marc.checkpoint import Checkpoint, load_checkpoint
from marc_serve.cli import main as marc_main
from service.model.onnx_session import open_session

ExportFn = Callable[..., Path]


# --- the artifact ---------------------------------------------------------------------------------


def test_tiny_artifact_has_every_variant_and_parity_numbers(tiny_artifact: Path) -> None:
    manifest = read_manifest(tiny_artifact)
    assert set(manifest.variants) == {"fp32", "int8", "fp16"}
    assert manifest.backbone.layer == 2 and manifest.backbone.total_layers == 4
    assert manifest.dim == 16 and manifest.max_length == 32
    assert manifest.parity["fp32"]["max_abs_diff"] <= 1e-4
    assert manifest.parity["int8"]["mean_cosine"] >= 0.99
    assert manifest.parity["fp16"]["mean_cosine"] >= 0.999
    # Parity ran on batch sizes other than the traced batch of 2, with max_length-long rows.
    shapes = manifest.parity["batch_shapes"]
    assert [1, 32] in shapes and all(batch != 2 for batch, _ in shapes) and any(b % 2 for b, _ in shapes)
    assert manifest.metrics["valid_auc"] == 0.5
    assert manifest.config["model"]["layer"] == 2 and manifest.config["train"] == {"mode": "frozen"}


def test_every_variant_matches_pytorch_on_new_shapes(tiny_artifact: Path, tiny_checkpoint: Path) -> None:
    import torch

    checkpoint = load_checkpoint(tiny_checkpoint)
    texts = ["red shoes", "x", "a blue leather jacket " * 30, "organic coffee", "vintage lamp"]
    batch = checkpoint.tokenizer(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
    with torch.no_grad():
        reference = checkpoint.encoder(batch["input_ids"], batch["attention_mask"]).numpy()
    fingerprints = set()
    for variant in ("fp32", "int8", "fp16"):
        artifact = load_artifact(tiny_artifact, variant)
        session = open_session(artifact)
        vectors = session.run(None, artifact.tokenize(texts))[0]
        assert vectors.shape == (5, 16) and vectors.dtype == np.float32
        cosine = (
            (vectors * reference).sum(1) / np.linalg.norm(vectors, axis=1) / np.linalg.norm(reference, axis=1)
        )
        assert cosine.min() > 0.99, variant
        if variant == "fp32":
            assert np.abs(vectors - reference).max() <= 1e-4
        fingerprints.add(artifact.fingerprint)
    assert len(fingerprints) == 3, "each precision needs its own cache identity"
    assert load_artifact(tiny_artifact).fingerprint == read_manifest(tiny_artifact).fingerprint


def _initializer_bytes(path: Path) -> int:
    model = onnx.load(str(path))
    return sum(onnx.numpy_helper.to_array(init).nbytes for init in model.graph.initializer)


def test_graph_holds_only_the_first_layers(
    export_tiny: ExportFn, tiny_artifact: Path, tiny_checkpoint_factory: Callable[..., Path]
) -> None:
    nodes = {n.name for n in onnx.load(str(tiny_artifact / "model.onnx")).graph.node}
    assert any("/layers.1/" in n for n in nodes)
    assert not any("/layers.2/" in n or "/layers.3/" in n for n in nodes), "dropped blocks in the graph"

    sizes = {layer: _initializer_bytes(export_tiny(layer=layer) / "model.onnx") for layer in (1, 4)}
    full = load_checkpoint(tiny_checkpoint_factory(export_tiny(layer=4).parent / "full", layer=4))
    block_bytes = sum(p.numel() * 4 for p in full.encoder.backbone.layers[0].parameters())
    # Three more blocks (plus the final norm kept at full depth) is all the layer-4 graph adds.
    assert sizes[4] - sizes[1] == pytest.approx(3 * block_bytes, rel=0.02)
    total = sum(p.numel() * 4 for p in full.encoder.parameters())
    assert sizes[4] == pytest.approx(total, rel=0.02)


def test_tokenizer_json_alone_reproduces_hf_ids(tiny_artifact: Path, tiny_checkpoint: Path) -> None:
    hf = load_checkpoint(tiny_checkpoint).tokenizer
    served = Tokenizer.from_file(str(tiny_artifact / "tokenizer.json"))
    texts = [
        "red shoes",
        "Ünïcödé café ☕ 😀",
        "  spaces  ",
        "a" * 500,
        "wireless bluetooth speaker " * 20,
        "x",
    ]
    expected = hf(texts, padding=True, truncation=True, max_length=32)
    encodings = served.encode_batch(texts)
    assert [e.ids for e in encodings] == expected["input_ids"]
    assert [e.attention_mask for e in encodings] == expected["attention_mask"]
    assert max(len(e.ids) for e in encodings) == 32
    for text in texts:  # one at a time: no padding, same truncation
        assert served.encode(text).ids == hf(text, truncation=True, max_length=32)["input_ids"]


# --- fingerprint -------------------------------------------------------------------------------


def test_fingerprint_is_stable_across_exports(
    tiny_checkpoint: Path, tiny_artifact: Path, tmp_path: Path
) -> None:
    again = export_checkpoint(tiny_checkpoint, tmp_path / "again", int8=True)
    first = read_manifest(tiny_artifact)
    assert again.fingerprint == first.fingerprint
    assert again.variants["fp32"].sha256 == first.variants["fp32"].sha256
    assert again.variants["int8"].fingerprint == first.variants["int8"].fingerprint


@pytest.mark.parametrize(
    "change",
    [
        {"compressor_seed": 1},
        {"layer": 1},
        {"pooling": "last"},
        {"dim": 8},
        {"max_length": 16},
        {"nested_dims": [4, 8, 16]},
    ],
    ids=["weights", "layer", "pooling", "k", "max_length", "nested_dims"],
)
def test_fingerprint_changes_with_what_changes_the_vectors(
    export_tiny: ExportFn, tiny_artifact: Path, change: dict
) -> None:
    assert read_manifest(export_tiny()).fingerprint == read_manifest(tiny_artifact).fingerprint
    assert read_manifest(export_tiny(**change)).fingerprint != read_manifest(tiny_artifact).fingerprint


def test_fingerprint_changes_with_the_tokenizer(
    tiny_checkpoint: Path, tiny_artifact: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import export.onnx_export as onnx_export

    def load_with_extra_token(directory: Path) -> Checkpoint:
        checkpoint = load_checkpoint(directory)
        checkpoint.tokenizer.add_tokens(["<extra-token>"])  # tokenizer changes, weights do not
        return checkpoint

    monkeypatch.setattr(onnx_export, "load_checkpoint", load_with_extra_token)
    manifest = export_checkpoint(tiny_checkpoint, tmp_path / "artifact")
    original = read_manifest(tiny_artifact)
    assert manifest.variants["fp32"].sha256 == original.variants["fp32"].sha256
    assert manifest.tokenizer.sha256 != original.tokenizer.sha256
    assert manifest.fingerprint != original.fingerprint


# --- the command -----------------------------------------------------------------------------------


def test_cli_exports_and_fails_loudly_on_parity(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        marc_main(["export", "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "ok"), "--int8"])
        == 0
    )
    out = capsys.readouterr().out
    assert "fingerprint" in out and "model.int8.onnx" in out
    assert load_artifact(tmp_path / "ok", "int8").manifest.name == "ok"

    monkeypatch.setattr("export.parity.FP32_MAX_ABS_DIFF", -1.0)  # no graph can pass this
    assert marc_main(["export", "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "ok")]) == 1
    assert "parity check failed" in capsys.readouterr().err
    assert not (tmp_path / "ok" / "manifest.json").exists(), "a failed export must not leave an artifact"


# --- the real backbone -----------------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_cut_at_two_layers_exports_with_parity(tmp_path: Path) -> None:
    import torch

    from marc.checkpoint import save_checkpoint
    from marc.config import ModelConfig
    from marc.modules import Compressor

    config = ModelConfig(backbone="smollm2", layer=2, dim=16, max_length=48)
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "checkpoint", config, Compressor(576, config.dim))
    manifest = export_checkpoint(tmp_path / "checkpoint", tmp_path / "artifact", int8=True)
    assert manifest.backbone.total_layers == 30 and manifest.backbone.hidden_size == 576
    assert manifest.parity["fp32"]["max_abs_diff"] <= 1e-4 and manifest.parity["int8"]["mean_cosine"] >= 0.99
    # Two of 30 blocks: the 49,152 x 576 embedding table dominates; 30 blocks would be ~4x bigger.
    assert manifest.variants["fp32"].bytes < 160e6

    # The parity check fed ONNX Runtime the ids of tokenizer.json after checking they equal the HF
    # tokenizer's (accents, emoji, truncated rows); the artifact is then usable without torch.
    artifact = load_artifact(tmp_path / "artifact", "int8")
    texts = ["Apple iPhone 13, 128 GB, blue", "Harry Potter and the Philosopher's Stone"]
    assert open_session(artifact).run(None, artifact.tokenize(texts))[0].shape == (2, 16)


def test_int8_target_decides_which_nodes_stay_fp32(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("export.quantize.TARGET_MEAN_COSINE", 2.0)  # unreachable: everything stays fp32
    manifest = export_checkpoint(tiny_checkpoint, tmp_path / "artifact", int8=True)
    report = manifest.export["int8"]
    graph = onnx.load(str(tmp_path / "artifact" / "model.int8.onnx")).graph
    weight_matmuls = [n for n in graph.node if n.op_type == "MatMul" and "_proj/" in n.name]
    assert len(weight_matmuls) == 2 * 7  # q k v o gate up down per block
    assert set(report["fp32_nodes"]) == {n.name for n in weight_matmuls} | {
        "/compressor/mean/Gemm",
        "/compressor/mean/Gemm_MatMul",
        "/backbone/embed_tokens/Gather",
    }
    assert not any(n.op_type in ("MatMulInteger", "DequantizeLinear") for n in graph.node)
    assert report["fp32_per_role"]["/backbone/layers.*/mlp/down_proj/MatMul"] == "2/2"

    monkeypatch.setattr("export.quantize.TARGET_MEAN_COSINE", 0.0)  # anything passes: nothing kept fp32
    manifest = export_checkpoint(tiny_checkpoint, tmp_path / "artifact", int8=True)
    assert manifest.export["int8"]["fp32_nodes"] == ["/compressor/mean/Gemm", "/compressor/mean/Gemm_MatMul"]
    graph = onnx.load(str(tmp_path / "artifact" / "model.int8.onnx")).graph
    quantised = [n.name for n in graph.node if n.op_type == "MatMulInteger"]
    assert len(quantised) == 14 and not any("compressor" in name for name in quantised)
    # The embedding table (a Gather, not a MatMul) is int8 too.
    assert any(n.op_type == "DequantizeLinear" and "embed_tokens" in n.name for n in graph.node)
    assert manifest.variants["int8"].bytes < manifest.variants["fp32"].bytes / 2


def test_int8_selection_meets_its_calibration_target(
    export_tiny: ExportFn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import export.quantize as quantize

    artifact = export_tiny()
    model, tokenizer = artifact / "model.onnx", artifact / "tokenizer.json"
    report = quantize.quantize_int8(model, tmp_path / "default.onnx", tokenizer)
    assert report["calibration_mean_cosine"] >= quantize.TARGET_MEAN_COSINE
    graph = onnx.load(str(tmp_path / "default.onnx")).graph
    assert any(n.op_type == "MatMulInteger" for n in graph.node)

    # A target between all-int8 and fp32: the search must keep some nodes fp32 and still quantise some,
    # and the model it writes (not only the search's mixed graph) must meet the target.
    all_int8 = report["all_int8_calibration_mean_cosine"]
    assert all_int8 < 1
    target = (1 + all_int8) / 2
    monkeypatch.setattr("export.quantize.TARGET_MEAN_COSINE", target)
    report = quantize.quantize_int8(model, tmp_path / "between.onnx", tokenizer)
    assert report["calibration_mean_cosine"] >= target
    kept = set(report["fp32_nodes"]) - {"/compressor/mean/Gemm", "/compressor/mean/Gemm_MatMul"}
    graph = onnx.load(str(tmp_path / "between.onnx")).graph
    assert kept and any(n.op_type == "MatMulInteger" for n in graph.node)
