"""`marc experiments --quick`: every table row, CI, claim and plot is produced (not what the numbers
are), on the synthetic data and a tiny fabricated MovieLens-100K folder (RecBole files) with both item
texts; the generated block of a document is replaced; the selection rules never pick by test data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from marc.data import load_dataset
from marc.experiments.choice import choose_mid_layer, choose_served_layer
from marc.experiments.claims import PLAIN
from marc.experiments.jobs import Job, RunContext, run_jobs
from marc.experiments.plan import FIXES, ids_only, pca, quick_plan
from marc.experiments.report import DOC_BEGIN, DOC_END, update_doc
from marc.experiments.resume import previous_results
from marc.experiments.run import run_experiments
from marc_serve.cli import main
from tests.marc.test_json_out import strict_loads
from tests.support.movielens import fabricate, write_recbole

TABLES = ("sweep", "compression", "ablations", "beta")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DATASETS = ["synthetic", "movielens-100k-title", "movielens-100k"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], Path]:
    root = tmp_path_factory.mktemp("experiments")
    movielens = write_recbole(fabricate(movies=60, users=40, per_user=25), root / "ml-100k")
    doc = root / "EXPERIMENTS.md"
    doc.write_text(f"# Notes kept\n\n{DOC_BEGIN}\nold numbers\n{DOC_END}\n\nTrailing notes kept.\n")
    out = root / "reports"
    code = main(
        [
            "experiments",
            "--quick",
            "--datasets",
            f"synthetic,movielens100k:{movielens}?text=title,movielens100k:{movielens}?text=kar",
            "--workers",
            "1",
            "--out",
            str(out),
            "--cache-dir",
            str(root / "cache"),
            "--update-doc",
            str(doc),
        ]
    )
    assert code == 0
    # strict: summary.json is valid JSON (an undefined metric, e.g. the std over one seed, is null)
    return out, strict_loads((out / "summary.json").read_text()), doc


@pytest.mark.slow
def test_quick_run_produces_every_table_row(quick_run: tuple[Path, dict[str, Any], Path]) -> None:
    _, summary, _ = quick_run
    plan = quick_plan()
    final = summary["backbone"]["num_layers"]
    assert summary["backbone"]["swept_layers"] == list(range(1, final + 1))
    assert list(summary["datasets"]) == DATASETS
    for name, result in summary["datasets"].items():
        sweep = {(r["kind"], r["layer"]) for r in result["sweep"]}
        assert sweep == {("ids", None)} | {("pca_std", layer) for layer in range(1, final + 1)}
        mid = result["mid_layer"]
        assert 1 <= mid < final, name

        table = {(r["kind"], r["layer"], r["k"], bool(r["settings"])) for r in result["compression"]}
        expected = {("ids", None, None, False), ("surface", None, None, False)}
        expected.add(("full", final, None, False))
        if name.startswith("movielens"):  # the genre + year baseline needs the genres
            expected.add(("genre_year", None, None, False))
        for k in plan.dims:
            expected |= {("random", None, k, False), ("tfidf", None, k, False), ("pca", final, k, False)}
            for layer in (final, mid):
                expected |= {("pca_std", layer, k, False), ("trained", layer, k, False)}
        assert table == expected, name

        ablations = [(r["kind"], r["layer"], r["settings"]) for r in result["ablations"]]
        # MARC is also cut at the served layer and at half depth, unless that is the mid/final layer.
        served = summary["layer_choice"]["layer"]
        checks = [layer for layer in dict.fromkeys([served, final // 2])]
        m = plan.lora_layers
        assert ablations == [
            ("trained", mid, {}),
            ("trained", mid, {"recon_weight": plan.recon_weight}),
            ("trained", mid, {"use_adapter": False}),
            ("trained", mid, {"beta": 0.0}),
            ("trained", mid, {"adapter_layers": 1}),
            ("trained", final, {}),
            *[("trained", layer, {}) for layer in checks if layer not in (mid, final)],
            ("lora", served, {"epochs": 1, "lora_layers": m}),
            ("lora", final, {"epochs": 1, "lora_layers": m}),
        ], name
        fixes = [(r["kind"], r["layer"], r["settings"]) for r in result["fixes"]]
        assert fixes[:2] == [("pca_std", served, {}), ("trained", served, {})], name
        assert [settings for _, _, settings in fixes[2:]] == [dict(s) for _, s in FIXES], name
        assert [r["settings"].get("beta") for r in result["beta"]] == [0.0, None, 0.01], name

        records = [*result["sweep"], *result["compression"], *result["ablations"], *result["beta"]]
        for record in records + result["fixes"]:
            seeds = list(plan.lora_seeds) if record["kind"] == "lora" else list(plan.seeds)
            assert record["seeds"] == seeds, record["label"]
            for key in (
                "auc_cold",
                "auc_warm",
                "gauc_cold",
                "logloss_cold",
                "logloss_warm",
                "valid_auc_cold",
            ):
                assert isinstance(record[key], float), (record["label"], key)
            for key in ("auc_cold", "auc_warm", "gauc_cold"):  # the CI is around the seeds' mean
                low, high = record["ci"][key]
                assert low <= record[key] <= high, (record["label"], key)
            assert record["bytes_per_item_fp32"] == 4 * record["dim"]
            if record["kind"] == "trained":
                assert record["train"]["best_epoch"] >= 1, record["label"]
            if record["kind"] == "lora":  # the best LoRA epoch, even if the warm start scored higher
                assert record["train"]["best_epoch"] >= 1, record["label"]
                assert record["train"]["warm_start_valid_auc"] > 0, record["label"]
                assert record["train"]["epoch_seconds"] > 0, record["label"]
            if record["kind"] == "lora":
                assert record["train"]["lora_layers"] == m, record["label"]

        assert [c["claim"] for c in result["claims"]] == ["1", "2", "3", "4", "5", "6"]
        claim4 = result["claims"][3]
        baselines = {c["b"].split(" (k=")[0] for c in [claim4["primary"], *claim4["comparisons"]]}
        assert {"ids only", "random vectors (control)", "TF-IDF of the text + SVD"} <= baselines, name
        assert ("genre multi-hot + year" in baselines) == name.startswith("movielens"), name
        assert set(claim4["strongest_baseline"]) == {str(k) for k in plan.dims}
        # claim 4 is decided against the strongest baseline at the served k: the hardest of them
        primary = claim4["primary"]
        assert primary["b"].split(" (k=")[0] == claim4["strongest_baseline"][str(plan.dim)], name
        assert all(
            c["difference"] >= primary["difference"]
            for c in claim4["comparisons"]
            if f"k={plan.dim}" in c["a"]
        )
        # claim 6 is decided by the fix that validation prefers, never by a test number
        chosen = max(result["fixes"][2:], key=lambda r: r["valid_gauc_cold"])
        assert result["claims"][5]["primary"]["a"] == chosen["label"], name
        for claim in result["claims"]:
            assert claim["primary"] not in claim["comparisons"], claim
            for c in claim["comparisons"] + claim["context"]:  # unadjusted: the verdict is the CI's
                assert "p_holm" not in c, c
                assert c["low"] <= c["difference"] <= c["high"], c
                expected_verdict = "better" if c["low"] > 0 else "worse" if c["high"] < 0 else "no difference"
                assert c["verdict"] == expected_verdict, c
        primaries = [claim["primary"] for claim in result["claims"]]
        for claim, c in zip(result["claims"], primaries, strict=True):
            # Holm over the dataset's primaries only: never below the comparison's own p
            assert c["low"] <= c["difference"] <= c["high"], c
            assert c["p"] <= c["p_holm"] <= min(1.0, len(primaries) * c["p"]) + 1e-9, c
            significant = c["p_holm"] < 0.05
            expected_verdict = (
                "no difference" if not significant else "better" if c["difference"] > 0 else "worse"
            )
            assert c["verdict"] == expected_verdict, c
            assert claim["verdict"] == PLAIN[c["verdict"]], claim

    # The rating datasets are replicated on another split (a generator's seed would change the items).
    replicates = summary["replicates"]
    assert sorted(replicates) == ["movielens-100k-split1", "movielens-100k-title-split1"]
    for name, replicate in replicates.items():
        assert replicate["split_seed"] == 1 and replicate["of"] == name.removesuffix("-split1")
        kinds = [(r["kind"], r["k"]) for r in replicate["compression"]]
        assert kinds == [
            ("genre_year", None),
            ("tfidf", plan.dim),
            ("pca_std", plan.dim),
            ("trained", plan.dim),
        ]
        (claim,) = replicate["claims"]
        assert len(claim["comparisons"]) == 2 and claim["verdict"] == PLAIN[claim["primary"]["verdict"]]
        strongest = claim["strongest_baseline"][str(plan.dim)]
        assert (
            claim["primary"]["b"].split(" (k=")[0] == strongest
            and claim["primary"]["p_holm"] == claim["primary"]["p"]
        )
        main = summary["datasets"][replicate["of"]]
        assert replicate["interactions"] != main["interactions"]  # another split of the same ratings
        assert replicate["num_items"] == main["num_items"]

    cost = summary["lora_cost"]
    assert cost["dataset"] == "synthetic"
    for layer, entry in cost["by_layer"].items():
        assert entry["lora_layers"] == int(layer)  # full depth: every kept layer
        assert entry["seconds_per_step"] > 0 and entry["epoch_seconds_estimate"] > 0

    choice = summary["layer_choice"]
    assert choice["layer"] in summary["backbone"]["swept_layers"]
    assert set(choice["mid_layer_by_dataset"]) == set(summary["datasets"])
    assert {"total_seconds", "pooled_states_seconds"} <= set(summary["timings"])
    assert summary["jobs"]["reused_from_previous_run"] == 0 and summary["jobs"]["total"] > 0


@pytest.mark.slow
def test_quick_run_writes_plots_markdown_and_doc(quick_run: tuple[Path, dict[str, Any], Path]) -> None:
    out, summary, doc = quick_run
    results = (out / "results.md").read_text()
    for slug in DATASETS:
        for plot in ("sweep", "compression", "beta"):
            path = out / f"{plot}-{slug}.png"
            assert path.read_bytes()[:8] == PNG_MAGIC, path
            assert f"]({plot}-{slug}.png)" in results
    for result in summary["datasets"].values():
        for record in [*result["compression"], *result["ablations"], *result["beta"]]:
            assert f"| {record['label']} |" in results, record["label"]
    assert results.count("**Claim 1") == results.count("**Claim 3") == len(summary["datasets"])
    assert "Full-depth LoRA cost" in results

    text = doc.read_text()
    assert text.startswith("# Notes kept\n") and text.endswith("Trailing notes kept.\n")
    assert "old numbers" not in text and "Regenerate: `marc experiments --quick" in text
    # Image links are relative to the document, which sits one level above the output folder.
    assert "](reports/sweep-synthetic.png)" in text


def test_update_doc_refuses_a_document_without_the_generated_block(tmp_path: Path) -> None:
    doc = tmp_path / "EXPERIMENTS.md"
    doc.write_text("# hand-written only\n")
    with pytest.raises(ValueError, match="no generated block"):
        update_doc(doc, {"datasets": {}}, tmp_path, "marc experiments")
    assert doc.read_text() == "# hand-written only\n"


def _record(layer: int, kind: str, valid: float) -> dict[str, Any]:
    return {"kind": kind, "layer": layer, "valid_auc_cold": valid, "auc_cold": 1.0 - valid}


def test_layer_choice_uses_validation_and_never_picks_the_final_layer_as_mid() -> None:
    sweep = [_record(1, "pca_std", 0.60), _record(2, "pca_std", 0.70), _record(3, "pca_std", float("nan"))]
    sweep += [_record(4, "pca_std", 0.90), _record(2, "full", 0.99), _record(1, "pca", 0.99)]
    # best non-final standardised-PCA layer by valid (what C sees; raw PCA does not choose); NaN never wins
    assert choose_mid_layer(sweep, final=4) == 2
    other = [_record(1, "pca_std", 0.80), _record(2, "pca_std", 0.65), _record(4, "pca_std", 0.62)]
    choice = choose_served_layer(
        {"a": {"sweep": sweep, "mid_layer": 2}, "b": {"sweep": other, "mid_layer": 1}}
    )
    # Means over the datasets: L1 0.70, L2 0.675, L4 0.76 (L3 is not scored on both): the served
    # layer may be the final one when the data say so.
    assert choice["layer"] == 4
    assert choice["mean_valid_auc_cold_by_layer"] == {"1": 0.7, "2": 0.675, "4": 0.76}
    assert choice["mid_layer_by_dataset"] == {"a": 2, "b": 1}


@pytest.mark.slow
def test_worker_processes_give_the_same_results_as_one_process() -> None:
    dataset = load_dataset("synthetic", num_items=60, num_users=30, interactions_per_user=20)
    states = {1: np.random.default_rng(0).normal(size=(dataset.num_items, 8)).astype(np.float32)}
    jobs = [
        Job(dataset.name, ids_only(), 0),
        Job(dataset.name, pca(1, 4), 0),
        Job(dataset.name, pca(1, 4), 1),
    ]
    results = {
        workers: run_jobs(
            RunContext(quick_plan(workers=workers), {dataset.name: dataset}, {dataset.name: states}),
            jobs,
            "test",
        )
        for workers in (1, 2)
    }
    for job in jobs:
        pooled, inline = results[2][job], results[1][job]
        assert {k: v for k, v in pooled.items() if k != "seconds"} == {
            k: v for k, v in inline.items() if k != "seconds"
        }, job


@pytest.mark.slow
def test_train_records_the_layer_choice_evidence_for_the_manifest(
    quick_run: tuple[Path, dict[str, Any], Path], tmp_path: Path
) -> None:
    out, summary, _ = quick_run
    common = ["train", "--backbone", "tiny", "--dim", "8", "--data", "synthetic", "--items", "60"]
    common += ["--users", "30", "--epochs", "1", "--max-length", "24"]
    assert main([*common, "--evidence", str(tmp_path / "missing.json"), "--out", str(tmp_path / "no")]) == 2
    assert not (tmp_path / "no").exists()  # refused before training

    layer = summary["layer_choice"]["layer"]
    checkpoint = tmp_path / "run"
    assert (
        main(
            [
                *common,
                "--layer",
                str(layer),
                "--evidence",
                str(out / "summary.json"),
                "--out",
                str(checkpoint),
            ]
        )
        == 0
    )
    recorded = json.loads((checkpoint / "metrics.json").read_text())["layer_choice"]
    assert recorded["layer"] == recorded["layer_used"] == layer and recorded["follows_evidence"] is True
    assert recorded["evidence"] == str(out / "summary.json")
    assert recorded["mean_valid_auc_cold_by_layer"] == summary["layer_choice"]["mean_valid_auc_cold_by_layer"]


@pytest.mark.slow
def test_resume_reuses_every_job_of_an_identical_run(quick_run: tuple[Path, dict[str, Any], Path]) -> None:
    out, summary, _ = quick_run
    plan = quick_plan(datasets=("synthetic",))
    previous = previous_results(out / "summary.json", plan)
    jobs = sum(len(r["runs"]) for d in list(summary["datasets"].values())[:1] for t in TABLES for r in d[t])
    assert len(previous) == len(set(previous)) and 0 < len(previous) <= jobs
    # nothing left to train or evaluate; the CIs come from the first run's prediction files
    rerun = run_experiments(plan, previous=previous, predictions_dir=out / "predictions")
    assert rerun["jobs"]["reused_from_previous_run"] == rerun["jobs"]["total"]
    for name in ("synthetic",):
        for table in TABLES:
            assert [r["auc_cold"] for r in rerun["datasets"][name][table]] == [
                r["auc_cold"] for r in summary["datasets"][name][table]
            ]
    # Other result settings: nothing is reused.
    assert previous_results(out / "summary.json", quick_plan(train_epochs=3)) == {}


def test_cli_ablation_names_are_the_plans_and_unknown_ones_are_refused(capsys) -> None:
    from marc.commands.experiments import ABLATION_NAMES
    from marc.experiments.plan import ABLATIONS

    assert tuple(ABLATIONS) == ABLATION_NAMES
    with pytest.raises(SystemExit):
        main(["experiments", "--quick", "--ablations", "no_adapter,bogus"])
    assert "unknown ablation 'bogus'" in capsys.readouterr().err
