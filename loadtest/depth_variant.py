"""The full-depth twin of an artifact, for the truncation row: the same checkpoint (same compressor
shape and weights) with the backbone kept to all N layers, exported by `marc export` in a subprocess
(torch stays out of the benchmark's own process). Cached: a rerun reuses the finished export."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

from artifact.manifest import Manifest
from artifact.names import MANIFEST_FILE

log = logging.getLogger(__name__)

CHECKPOINT_CONFIG = "config.json"


def checkpoint_of(manifest: Manifest, given: Path | None) -> Path:
    """The checkpoint the artifact was exported from (``given`` wins over the manifest's record)."""
    recorded = manifest.export.get("checkpoint")
    checkpoint = given or (Path(recorded) if recorded else None)
    if checkpoint is None or not (checkpoint / CHECKPOINT_CONFIG).is_file():
        where = f"{checkpoint} has no {CHECKPOINT_CONFIG}" if checkpoint else "the manifest records none"
        raise FileNotFoundError(
            f"the truncation row needs the artifact's checkpoint ({where}); pass --checkpoint DIR"
        )
    return checkpoint


def full_depth_artifact(manifest: Manifest, checkpoint: Path, cache_dir: Path) -> Path:
    """Artifact of ``checkpoint`` at the backbone's full depth (fp32 only), built once into ``cache_dir``."""
    total = manifest.backbone.total_layers
    out = cache_dir / f"full-depth-{manifest.fingerprint[:16]}-l{total}"
    if (out / MANIFEST_FILE).is_file():
        return out
    staging = cache_dir / f"{out.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging_checkpoint = staging / "checkpoint"
    shutil.copytree(checkpoint, staging_checkpoint)
    config_path = staging_checkpoint / CHECKPOINT_CONFIG
    config = json.loads(config_path.read_text())
    config["model"]["layer"] = total
    config_path.write_text(json.dumps(config, indent=2))
    log.info("exporting the full-depth (%d-layer) twin of %s into %s (once)", total, manifest.name, out)
    command = [
        sys.executable,
        "-m",
        "marc_serve",
        "export",
        "--checkpoint",
        str(staging_checkpoint),
        "--out",
        str(staging / "artifact"),
        "--name",
        f"{manifest.name}-full-depth",
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"full-depth export failed: {(done.stderr or done.stdout).strip()[-2000:]}")
    shutil.rmtree(out, ignore_errors=True)
    (staging / "artifact").rename(out)
    shutil.rmtree(staging, ignore_errors=True)
    return out
