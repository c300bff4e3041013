"""ONNX Runtime sessions for an artifact: serving options, and the check that a graph's inputs and
output are the ones its manifest promises."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import onnxruntime

from artifact.loader import LoadedArtifact
from artifact.names import ArtifactError

_ONNX_INT64 = "tensor(int64)"
_ONNX_FLOAT = "tensor(float)"


def check_session_io(session: onnxruntime.InferenceSession, artifact: LoadedArtifact) -> None:
    """Refuse a graph whose inputs/outputs differ from the manifest (names, dtypes, rank, k)."""
    manifest, path = artifact.manifest, artifact.model_path
    inputs = {i.name: i for i in session.get_inputs()}
    if sorted(inputs) != sorted(manifest.inputs):
        raise ArtifactError(
            f"{path}: graph inputs {sorted(inputs)} do not match the manifest's {sorted(manifest.inputs)}"
        )
    for name, arg in inputs.items():
        if arg.type != _ONNX_INT64 or len(arg.shape) != 2:
            raise ArtifactError(
                f"{path}: input {name!r} is {arg.type} of rank {len(arg.shape)}; expected "
                f"{_ONNX_INT64} [batch, sequence]"
            )
    outputs = session.get_outputs()
    if [o.name for o in outputs] != [manifest.output]:
        raise ArtifactError(
            f"{path}: graph outputs {[o.name for o in outputs]} do not match the manifest's "
            f"[{manifest.output!r}]"
        )
    out = outputs[0]
    if out.type != _ONNX_FLOAT or len(out.shape) != 2:
        raise ArtifactError(
            f"{path}: output {out.name!r} is {out.type} of rank {len(out.shape)}; expected "
            f"{_ONNX_FLOAT} [batch, {manifest.dim}]"
        )
    if isinstance(out.shape[1], int) and out.shape[1] != manifest.dim:
        raise ArtifactError(f"{path}: output width {out.shape[1]} but the manifest says dim {manifest.dim}")


def ort_session_options(intra_threads: int = 0, inter_threads: int = 0) -> onnxruntime.SessionOptions:
    """Session options for serving: full graph optimisation, sequential execution; 0 threads = ORT's
    default (one per physical core)."""
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = intra_threads
    options.inter_op_num_threads = inter_threads
    options.log_severity_level = 3  # errors only: no warning spam at start-up
    # Idle ORT threads would otherwise spin between runs and take the core the event loop needs.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def open_session(
    artifact: LoadedArtifact,
    *,
    providers: Sequence[str | tuple[str, dict[str, Any]]] = ("CPUExecutionProvider",),
    options: onnxruntime.SessionOptions | None = None,
) -> onnxruntime.InferenceSession:
    """Create the ONNX Runtime session for ``artifact`` and check its inputs/outputs."""
    try:
        session = onnxruntime.InferenceSession(
            str(artifact.model_path), sess_options=options or ort_session_options(), providers=list(providers)
        )
    except Exception as exc:  # ORT raises its own exception types (Fail, InvalidGraph, ...)
        raise ArtifactError(f"{artifact.model_path}: ONNX Runtime cannot load the model ({exc})") from exc
    check_session_io(session, artifact)
    return session
