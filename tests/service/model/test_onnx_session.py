"""ONNX Runtime sessions (`service.model.onnx_session`): a graph whose inputs differ from its manifest is
refused at session start, naming the model file, even when every size, sha256 and fingerprint matches."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from artifact.loader import load_artifact
from artifact.names import ArtifactError
from service.model.onnx_session import open_session
from tests.support.artifacts import rename_graph_input


def test_a_graph_unlike_its_manifest_is_refused_naming_the_model(tiny_artifact: Path, tmp_path: Path) -> None:
    directory = tmp_path / "artifact"
    shutil.copytree(tiny_artifact, directory)
    rename_graph_input(directory)
    artifact = load_artifact(directory)  # sizes, sha256 and fingerprints all match the forged manifest
    with pytest.raises(ArtifactError) as refused:
        open_session(artifact)
    message = str(refused.value)
    assert str(directory / "model.onnx") in message and "inputs" in message, message
    assert "'ids'" in message and "'input_ids'" in message, message


def test_an_intact_artifact_opens_and_runs(tiny_artifact: Path) -> None:
    artifact = load_artifact(tiny_artifact)
    vectors = open_session(artifact).run(None, artifact.tokenize(["red shoes", "a blue lamp"]))[0]
    assert vectors.shape == (2, artifact.dim)
