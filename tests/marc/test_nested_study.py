"""`marc experiments-nested --quick`: the study runs end to end at CI size and writes its table,
plot, summary and the EXPERIMENTS.md-style block, with the repo's paired statistics."""

from __future__ import annotations

from pathlib import Path

import pytest

from marc.nested_study import DOC_BEGIN, DOC_END
from marc_serve.cli import main
from tests.marc.test_json_out import strict_loads


@pytest.mark.slow
def test_quick_study_writes_table_plot_and_doc_block(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = tmp_path / "EXPERIMENTS.md"
    doc.write_text(f"# head\n{DOC_BEGIN}\nstale block\n{DOC_END}\ntail\n")
    out = tmp_path / "report"
    options = ["--cache-dir", str(tmp_path / "cache"), "--out", str(out), "--update-doc", str(doc)]
    assert main(["experiments-nested", "--quick", *options]) == 0
    summary = strict_loads((out / "summary.json").read_text())
    (result,) = summary["datasets"]
    assert [row["d"] for row in result["rows"]] == [4, 8, 16]
    for row in result["rows"]:
        assert set(row["metrics"]) == {"nested", "separate", "pca"}
        for comparison in ("nested_vs_separate", "nested_vs_pca"):
            for metric in ("gauc_cold", "auc_cold"):
                compared = row[comparison][metric]
                assert compared["low"] <= compared["estimate"] <= compared["high"]
                expected = (
                    "better" if compared["low"] > 0 else "worse" if compared["high"] < 0 else "no difference"
                )
                assert compared["verdict"] == expected and 0 < compared["p"] <= 1
    assert sorted(result["trained"]) == ["0", "1"]  # the quick plan's two seeds
    assert len(list((out / "predictions" / "synthetic").glob("*-seed1.npz"))) == 9
    assert result["price_at_full_k"]["d"] == 16
    assert sorted(result["trained"]["0"]["nested_train"]["nested"], key=int) == ["4", "8", "16"]
    assert (out / "nested-synthetic.png").stat().st_size > 1000
    text = doc.read_text()
    assert "stale block" not in text and text.startswith("# head\n") and text.endswith(f"{DOC_END}\ntail\n")
    assert "| 16 |" in text and "Price of nesting at full k = 16" in text
    assert "report/nested-synthetic.png" in text
    assert "Price of nesting" in capsys.readouterr().out


def test_bad_dims_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["experiments-nested", "--quick", "--dims", "16,8"])
    assert "--dims: must be ascending" in capsys.readouterr().err
