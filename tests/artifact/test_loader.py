"""The verified loader (`artifact.loader`): a tampered, truncated or inconsistent artifact is refused
with the file named, and loading (with the serving side's ONNX Runtime session) needs no torch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from artifact.loader import load_artifact
from artifact.names import ArtifactError
from service.model.onnx_session import open_session
from tests.support.artifacts import edit_tokenizer, flip_model_byte, rehash, truncate_model, wrong_fingerprint

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
    from service.model.onnx_session import open_session

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
        cwd=Path(__file__).resolve().parents[2],
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["heavy"] == []
    artifact = load_artifact(tiny_artifact, variant)
    expected = open_session(artifact).run(None, artifact.tokenize(["red shoes", "a blue leather jacket"]))[0]
    assert out["fingerprint"] == artifact.fingerprint
    np.testing.assert_allclose(np.array(out["vectors"], dtype=np.float32), expected, rtol=0, atol=1e-6)


# --- refusals -----------------------------------------------------------------------------------


def _manifest_json(directory: Path) -> dict:
    return json.loads((directory / "manifest.json").read_text())


def _write_manifest(directory: Path, raw: dict) -> None:
    (directory / "manifest.json").write_text(json.dumps(raw))


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
    rehash(d)


REFUSALS = {
    "model byte flipped": (flip_model_byte, "fp32", "model.onnx", "sha256"),
    "model truncated": (truncate_model, "fp32", "model.onnx", "bytes"),
    "int8 model missing": (_missing_model, "int8", "model.int8.onnx", "missing"),
    "tokenizer edited": (edit_tokenizer, "fp32", "tokenizer.json", "sha256"),
    "tokenizer truncation removed": (_tokenizer_without_truncation, "fp32", "tokenizer.json", "truncation"),
    "manifest fingerprint wrong": (wrong_fingerprint, "fp32", "manifest.json", "fingerprint"),
    "manifest setting edited": (_edited_setting, "fp32", "manifest.json", "fingerprint"),
    "format version unknown": (_unknown_format, "fp32", "manifest.json", "format_version 99"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_tampered_artifact_is_refused_naming_the_file(tiny_artifact: Path, tmp_path: Path, case: str) -> None:
    tamper, variant, file, problem = REFUSALS[case]
    directory = tmp_path / "artifact"
    shutil.copytree(tiny_artifact, directory)
    load_artifact(directory, variant)  # intact copy loads
    tamper(directory)
    with pytest.raises(ArtifactError) as refused:
        load_artifact(directory, variant)
    message = str(refused.value)
    assert str(directory / file) in message and problem in message, message


def test_unknown_or_absent_variant_is_refused(tiny_artifact: Path, export_tiny: Callable[..., Path]) -> None:
    with pytest.raises(ArtifactError, match="int4"):
        load_artifact(tiny_artifact, "int4")
    with pytest.raises(ArtifactError, match=r"manifest\.json: variant 'int8' is not in this artifact"):
        load_artifact(export_tiny(), "int8")
