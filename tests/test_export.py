"""Export: ONNX artifact from a checkpoint, parity, quantised variants, fingerprint, torch-free loader."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from tokenizers import Tokenizer

from artifact.fingerprint import compute_fingerprint, fingerprint_settings, variant_fingerprint
from artifact.loader import load_artifact
from artifact.manifest import read_manifest, sha256_file
from artifact.names import ArtifactError
from export.onnx_export import export_checkpoint
from marc.checkpoint import Checkpoint, load_checkpoint
from marc_serve.cli import main as marc_main
from service.onnx_session import open_session

ExportFn = Callable[..., Path]


@pytest.fixture(scope="module")
def export_tiny(
    tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint_factory: Callable[..., Path]
) -> ExportFn:
    """export_tiny(**overrides) -> artifact dir (fp32 only) of a tiny checkpoint; cached per overrides."""
    cache: dict[str, Path] = {}

    def export(**overrides: object) -> Path:
        key = json.dumps(overrides, sort_keys=True)
        if key not in cache:
            root = tmp_path_factory.mktemp("export")
            checkpoint = tiny_checkpoint_factory(root / "checkpoint", **overrides)
            export_checkpoint(checkpoint, root / "artifact")
            cache[key] = root / "artifact"
        return cache[key]

    return export


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


# --- torch-free loading ------------------------------------------------------------------------

_TORCH_FREE_SCRIPT = textwrap.dedent(
    """
    import json, sys

    class Forbidden:
        blocked = ("torch", "transformers", "onnx")

        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in self.blocked:
                raise ImportError(f"{name} must not be imported on the serving side")
            return None

    sys.meta_path.insert(0, Forbidden())
    from artifact.loader import load_artifact
    from service.onnx_session import open_session

    artifact = load_artifact(sys.argv[1], sys.argv[2])
    session = open_session(artifact)
    vectors = session.run(None, artifact.tokenize(["red shoes", "a blue leather jacket"]))[0]
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in Forbidden.blocked)
    print(json.dumps({"fingerprint": artifact.fingerprint, "vectors": vectors.tolist(), "heavy": heavy}))
    """
)


@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_loader_works_where_torch_cannot_be_imported(tiny_artifact: Path, variant: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _TORCH_FREE_SCRIPT, str(tiny_artifact), variant],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[1],
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["heavy"] == []
    artifact = load_artifact(tiny_artifact, variant)
    expected = open_session(artifact).run(None, artifact.tokenize(["red shoes", "a blue leather jacket"]))[0]
    assert out["fingerprint"] == artifact.fingerprint
    np.testing.assert_allclose(np.array(out["vectors"], dtype=np.float32), expected, rtol=0, atol=1e-6)


# --- refusals ------------------------------------------------------------------------------------


def _manifest_json(directory: Path) -> dict:
    return json.loads((directory / "manifest.json").read_text())


def _write_manifest(directory: Path, raw: dict) -> None:
    (directory / "manifest.json").write_text(json.dumps(raw))


def _rehash(directory: Path) -> None:
    """Re-record every file's size/sha256 and the fingerprints, as a careful forger would."""
    raw = _manifest_json(directory)
    for entry in [raw["tokenizer"], *raw["variants"].values()]:
        path = directory / entry["file"]
        entry.update(sha256=sha256_file(path), bytes=path.stat().st_size)
    settings = fingerprint_settings(
        backbone_source=raw["backbone"]["source"],
        layer=raw["backbone"]["layer"],
        pooling=raw["pooling"],
        dim=raw["dim"],
        max_length=raw["max_length"],
    )
    raw["fingerprint"] = compute_fingerprint(
        raw["variants"]["fp32"]["sha256"], raw["tokenizer"]["sha256"], settings
    )
    for name, entry in raw["variants"].items():
        entry["fingerprint"] = variant_fingerprint(raw["fingerprint"], name, entry["sha256"])
    _write_manifest(directory, raw)


def _flip_model_byte(d: Path) -> None:
    data = bytearray((d / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (d / "model.onnx").write_bytes(bytes(data))


def _truncate_model(d: Path) -> None:
    data = (d / "model.onnx").read_bytes()
    (d / "model.onnx").write_bytes(data[: len(data) // 3])


def _edit_tokenizer(d: Path) -> None:  # same length, so only the sha256 can tell
    text = (d / "tokenizer.json").read_text()
    (d / "tokenizer.json").write_text(text.replace('"<pad>"', '"<pab>"', 1))


def _wrong_fingerprint(d: Path) -> None:
    raw = _manifest_json(d)
    raw["fingerprint"] = "0" * 64
    _write_manifest(d, raw)


def _edited_setting(d: Path) -> None:  # max_length changed without re-fingerprinting
    raw = _manifest_json(d)
    raw["max_length"] = 64
    _write_manifest(d, raw)


def _unknown_format(d: Path) -> None:
    raw = _manifest_json(d)
    raw["format_version"] = 99
    _write_manifest(d, raw)


def _missing_model(d: Path) -> None:
    (d / "model.int8.onnx").unlink()


def _tokenizer_without_truncation(d: Path) -> None:
    tokenizer = Tokenizer.from_file(str(d / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.save(str(d / "tokenizer.json"))
    _rehash(d)


def _renamed_graph_input(d: Path) -> None:
    model = onnx.load(str(d / "model.onnx"))
    for graph_input in model.graph.input:
        if graph_input.name == "input_ids":
            graph_input.name = "ids"
    for node in model.graph.node:
        node.input[:] = ["ids" if name == "input_ids" else name for name in node.input]
    onnx.save(model, str(d / "model.onnx"))
    _rehash(d)


REFUSALS = {
    "model byte flipped": (_flip_model_byte, "fp32", "model.onnx", "sha256"),
    "model truncated": (_truncate_model, "fp32", "model.onnx", "bytes"),
    "int8 model missing": (_missing_model, "int8", "model.int8.onnx", "missing"),
    "tokenizer edited": (_edit_tokenizer, "fp32", "tokenizer.json", "sha256"),
    "tokenizer truncation removed": (_tokenizer_without_truncation, "fp32", "tokenizer.json", "truncation"),
    "manifest fingerprint wrong": (_wrong_fingerprint, "fp32", "manifest.json", "fingerprint"),
    "manifest setting edited": (_edited_setting, "fp32", "manifest.json", "fingerprint"),
    "format version unknown": (_unknown_format, "fp32", "manifest.json", "format_version 99"),
    "graph input renamed": (_renamed_graph_input, "fp32", "model.onnx", "inputs"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_tampered_artifact_is_refused_naming_the_file(tiny_artifact: Path, tmp_path: Path, case: str) -> None:
    tamper, variant, file, problem = REFUSALS[case]
    directory = tmp_path / "artifact"
    shutil.copytree(tiny_artifact, directory)
    load_artifact(directory, variant)  # intact copy loads
    tamper(directory)
    with pytest.raises(ArtifactError) as refused:
        open_session(load_artifact(directory, variant))
    message = str(refused.value)
    assert str(directory / file) in message and problem in message, message


def test_unknown_or_absent_variant_is_refused(tiny_artifact: Path, export_tiny: ExportFn) -> None:
    with pytest.raises(ArtifactError, match="int4"):
        load_artifact(tiny_artifact, "int4")
    with pytest.raises(ArtifactError, match=r"manifest\.json: variant 'int8' is not in this artifact"):
        load_artifact(export_tiny(), "int8")


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
    [{"compressor_seed": 1}, {"layer": 1}, {"pooling": "last"}, {"dim": 8}, {"max_length": 16}],
    ids=["weights", "layer", "pooling", "k", "max_length"],
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
