"""Recorded int8 selections: which nodes `export.quantize` keeps fp32, per graph and calibration set.

The search measures the sensitivity of every quantisable node with ONNX Runtime, minutes for the default
artifact on 2 cores. Its outcome depends only on the fp32 graph (``model.onnx``'s sha256) and on the
calibration set (token ids, target and method: `export.quantize.calibration_fingerprint`), so an entry
of ``export/int8_selections.json`` keyed by both is reused by the next export of the same graph: the
int8 file is written with the recorded fp32 nodes and scored again on the calibration texts (the search
runs when it misses the target or when nothing matches). ``make serve`` on a fresh clone builds the
default checkpoint bit for bit (docs/operations.md, "Reproducible artifacts") and so skips the search.

Record an artifact's searched selection (after `marc export --int8`)::

    python -m export.int8_selections artifacts/default
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

SELECTIONS_FILE = Path(__file__).with_name("int8_selections.json")
# What a reused selection reports as the search measured it (manifest.export.int8).
RECORDED_FROM_SEARCH = ("all_int8_calibration_mean_cosine", "fp32_per_role", "fp32_nodes")


def read_selections(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return list(json.loads(path.read_text())["selections"])


def find_selection(path: Path, graph_sha256: str, calibration_fingerprint: str) -> dict[str, Any] | None:
    for entry in read_selections(path):
        if (
            entry["graph_sha256"] == graph_sha256
            and entry["calibration_fingerprint"] == calibration_fingerprint
        ):
            return entry
    return None


def record_selection(path: Path, report: dict[str, Any], model: str, cpu: str) -> dict[str, Any]:
    """Add (or replace) the entry of ``report`` (a searched ``manifest.export.int8``) in ``path``."""
    if report.get("selection") != "searched":
        raise ValueError(f"only a searched selection is recorded; this one is {report.get('selection')!r}")
    entry = {
        "model": model,
        "graph_sha256": report["graph_sha256"],
        "calibration_fingerprint": report["calibration_fingerprint"],
        "searched_on": cpu,
        "calibration_mean_cosine": report["calibration_mean_cosine"],
        **{name: report[name] for name in RECORDED_FROM_SEARCH},
    }
    kept = [
        e
        for e in read_selections(path)
        if (e["graph_sha256"], e["calibration_fingerprint"])
        != (entry["graph_sha256"], entry["calibration_fingerprint"])
    ]
    document = {
        "about": "int8 selections reused by `marc export --int8` for the same graph and calibration set "
        "(export/int8_selections.py)",
        "selections": [*kept, entry],
    }
    path.write_text(json.dumps(document, indent=1) + "\n")
    return entry


def main(argv: list[str] | None = None) -> int:
    from artifact.manifest import read_manifest
    from marc.machine import cpu_model

    parser = argparse.ArgumentParser(description="record an artifact's searched int8 selection")
    parser.add_argument("artifact", type=Path, help="artifact directory exported with --int8")
    parser.add_argument("--file", type=Path, default=SELECTIONS_FILE, help="default: %(default)s")
    args = parser.parse_args(argv)
    manifest = read_manifest(args.artifact)
    report = manifest.export.get("int8")
    if not report:
        parser.error(f"{args.artifact}: no int8 variant in the manifest")
    if report.get("graph_sha256") != manifest.variants["fp32"].sha256:
        parser.error(f"{args.artifact}: the int8 report is not of this artifact's model.onnx")
    try:
        entry = record_selection(args.file, report, manifest.name, cpu_model())
    except ValueError as error:
        parser.error(str(error))
    print(f"recorded in {args.file}: {entry['model']} graph {entry['graph_sha256'][:16]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
