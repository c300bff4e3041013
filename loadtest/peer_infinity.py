"""The peer for `marc bench --peer infinity`: Infinity (``infinity-emb``) serving the artifact's
truncated backbone on CPU, from its own virtualenv.

Infinity pins other versions of numpy, uvicorn, transformers, ... than this project, so it never goes
into the project's environment: `ensure_venv` makes ``--peer-venv`` (with ``--install-peer``) with
pip from the package index the machine is configured for, the same torch CPU wheel as the project's
(``torch==<this torch's version>``) and ``infinity-emb[server,torch,optimum,cache]==INFINITY_VERSION``.

The model (`loadtest.peer_model`) is the backbone's first L layers with mean pooling, as a Hugging
Face folder; for Infinity's optimum engine the same folder also gets an ONNX export made by optimum in the
peer's venv (what Infinity loads, then optimises itself). `PeerServer` runs
``infinity_emb v2`` on 127.0.0.1 with one engine (``torch`` or ``optimum``), optionally with its
vector disk cache (its hot path), and the benchmark drives it with the same load generator and
phases as the service, through its OpenAI-style ``/embeddings`` route.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from loadtest.processes import ServerProcess

log = logging.getLogger(__name__)

INFINITY_VERSION = "0.0.78"
PEER_MODEL_NAME = "peer"
ENGINES = ("torch", "optimum")
ONNX_FILE = "model.onnx"
# optimum's exporter, then the graph's position_ids input computed from attention_mask instead
# (cumsum - 1: the positions of right-padded rows), because Infinity's optimum engine sends
# input_ids and attention_mask only.
_EXPORT_ONNX = """
import sys
import onnx
from onnx import helper, TensorProto
from optimum.onnxruntime import ORTModelForFeatureExtraction
ORTModelForFeatureExtraction.from_pretrained(sys.argv[1], export=True).save_pretrained(sys.argv[2])
path = sys.argv[2] + "/model.onnx"
model = onnx.load(path)
graph = model.graph
if any(i.name == "position_ids" for i in graph.input):
    graph.input.remove(next(i for i in graph.input if i.name == "position_ids"))
    graph.initializer.extend([
        helper.make_tensor("peer_axis_1", TensorProto.INT64, [], [1]),
        helper.make_tensor("peer_one", TensorProto.INT64, [], [1]),
    ])
    nodes = [
        helper.make_node("CumSum", ["attention_mask", "peer_axis_1"], ["peer_cumsum"]),
        helper.make_node("Sub", ["peer_cumsum", "peer_one"], ["position_ids"]),
    ]
    for node in reversed(nodes):
        graph.node.insert(0, node)
onnx.save(model, path)
"""


def peer_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def ensure_venv(venv: Path, *, install: bool) -> Path:
    """The peer's interpreter; with ``install``, makes the venv and installs Infinity when missing."""
    python = peer_python(venv)
    if (venv / "bin" / "infinity_emb").is_file():
        return python
    if not install:
        raise FileNotFoundError(
            f"no Infinity in {venv}: pass --install-peer to install infinity-emb {INFINITY_VERSION} "
            "there (its own virtualenv; never the project's)"
        )
    import torch

    torch_version = torch.__version__  # e.g. 2.13.0+cpu: the CPU wheel this machine already uses
    log.info("installing infinity-emb %s and torch %s into %s", INFINITY_VERSION, torch_version, venv)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, f"torch=={torch_version}"], check=True)
    subprocess.run([*pip, f"infinity-emb[server,torch,optimum,cache]=={INFINITY_VERSION}"], check=True)
    return python


def peer_versions(python: Path) -> dict[str, str]:
    """Versions of what the peer runs on."""
    code = (
        "import importlib.metadata as m, json; print(json.dumps({p: m.version(p) for p in "
        "['infinity-emb', 'torch', 'transformers', 'sentence-transformers', 'optimum', 'onnxruntime']}))"
    )
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True)
    import json

    return json.loads(done.stdout)


def build_peer_model(backbone: str, layer: int, max_length: int, cache_dir: Path, python: Path) -> Path:
    """The backbone cut at ``layer`` as a Hugging Face folder with an ONNX export beside the weights,
    built once into ``cache_dir``."""
    out = cache_dir / f"peer-{backbone}-l{layer}"
    if (out / ONNX_FILE).is_file():
        return out
    if not (out / "config.json").is_file():
        log.info("peer model: %s cut at layer %d -> %s", backbone, layer, out)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "loadtest.peer_model",
                "--backbone",
                backbone,
                "--layer",
                str(layer),
                "--max-length",
                str(max_length),
                "--out",
                str(out),
            ],
            check=True,
        )
    log.info("peer model: ONNX export (optimum, in the peer's venv) for Infinity's optimum engine")
    staging = cache_dir / f"{out.name}-onnx.partial"
    subprocess.run(
        [str(python), "-c", _EXPORT_ONNX, str(out), str(staging)],
        check=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    (staging / ONNX_FILE).rename(out / ONNX_FILE)
    return out


class PeerServer(ServerProcess):
    """``infinity_emb v2`` on a free port of 127.0.0.1 with one engine on the CPU."""

    def __init__(
        self, python: Path, model: Path, engine: str, *, batch_size: int, log_path: Path, cache: bool = False
    ) -> None:
        infinity = python.parent / "infinity_emb"
        args = [
            "v2",
            "--model-id",
            # Run from inside the folder: Infinity 0.0.78's optimum engine finds a local folder's ONNX
            # file only by a path relative to where it runs.
            ".",
            "--served-model-name",
            PEER_MODEL_NAME,
            "--engine",
            engine,
            "--device",
            "cpu",
            "--batch-size",
            str(batch_size),
            "--host",
            "127.0.0.1",
            "--log-level",
            "warning",
            "--vector-disk-cache" if cache else "--no-vector-disk-cache",
        ]
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",  # a local folder; nothing is fetched
            "INFINITY_ANONYMOUS_USAGE_STATS": "0",
            "DO_NOT_TRACK": "1",
            "INFINITY_CACHE_DIR": str(log_path.parent.resolve() / f"infinity-cache-{engine}"),
            # Its optimum engine writes the graph it optimised under the hub cache: the scratch folder.
            "HF_HOME": str(log_path.parent.resolve() / f"hf-home-{engine}"),
        }
        super().__init__(
            f"infinity ({engine})",
            args,
            log_path=log_path,
            ready_path="/health",
            env=env,
            start_timeout=300,
            command=[str(infinity.resolve())],
            cwd=model,
        )
