"""`marc bench-encodings`: one row per encoding and served size, with the documented payload sizes;
lossless encodings keep cosine 1 and every neighbour, lossy ones are measured, not assumed."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest

from marc_serve.cli import main


def quoted_base64(payload_bytes: int) -> int:
    return 2 + 4 * math.ceil(payload_bytes / 3)


def test_bench_encodings_rows_for_every_encoding_and_prefix(
    export_tiny: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    artifact = export_tiny(nested_dims=[4, 8, 16])
    out = tmp_path / "enc.json"
    assert main(["bench-encodings", "--artifact", str(artifact), "--items", "60", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    rows = {(row["encoding"], row["dim"]): row for row in report["rows"]}
    assert set(rows) == {(e, d) for e in ("float", "base64", "float16", "int8", "binary") for d in (4, 8, 16)}
    assert report["variant"] == "fp32"  # export_tiny has no int8 variant: auto serves fp32
    for d in (4, 8, 16):
        for lossless in ("float", "base64"):
            assert rows[(lossless, d)]["cosine_min"] == pytest.approx(1.0, abs=1e-6)
            assert rows[(lossless, d)]["recall_at_10"] == 1.0
        assert rows[("float16", d)]["cosine_min"] > 0.999
        assert rows[("int8", d)]["cosine_min"] > 0.98
        assert 0 < rows[("binary", d)]["cosine_mean"] < 1 and 0 < rows[("binary", d)]["recall_at_10"] <= 1
        # Quoted base64 of 4·d, 2·d and d/8 bytes; int8: d bytes plus the scale number.
        assert rows[("base64", d)]["wire_bytes"] == quoted_base64(4 * d)
        assert rows[("float16", d)]["wire_bytes"] == quoted_base64(2 * d)
        assert rows[("binary", d)]["wire_bytes"] == quoted_base64(math.ceil(d / 8))
        assert rows[("int8", d)]["wire_bytes"] > quoted_base64(d)
    assert (
        rows[("int8", 16)]["wire_bytes"]
        < rows[("float16", 16)]["wire_bytes"]
        < rows[("base64", 16)]["wire_bytes"]
    )
    printed = capsys.readouterr().out
    assert "| `binary` | 16 |" in printed and out.with_suffix(".md").read_text() == printed


def test_bench_encodings_refuses_a_catalogue_too_small_for_recall_at_10(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="--items must be at least 11"):
        main(["bench-encodings", "--artifact", str(tmp_path), "--items", "5"])
