"""`marc experiments --quick`: every table row and plot is produced (not what the numbers are), on the
generated datasets and a tiny fabricated MovieLens-1M folder; the generated block of a document is
replaced; the selection rules never pick by test data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from marc.data import load_dataset
from marc.experiments.choice import choose_mid_layer, choose_served_layer
from marc.experiments.claims import compare
from marc.experiments.jobs import Job, RunContext, run_jobs
from marc.experiments.plan import ids_only, pca, quick_plan
from marc.experiments.report import DOC_BEGIN, DOC_END, update_doc
from marc.experiments.resume import previous_results
from marc.experiments.run import run_experiments
from marc_serve.cli import main

TABLES = ("sweep", "compression", "ablations", "beta")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
GENRES = ["Comedy", "Drama", "Action", "Horror", "Romance", "Sci-Fi"]


def _fabricate_movielens(directory: Path, movies: int = 40, users: int = 30) -> Path:
    """A folder in the ml-1m format: each user rates 20 movies over time; the last five movies are
    only ever rated last, so the per-user time split leaves them cold (never in train)."""
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "movies.dat").write_text(
        "".join(
            f"{m}::Movie number {m} ({1980 + m})::{GENRES[m % len(GENRES)]}|{GENRES[(m * 7) % len(GENRES)]}\n"
            for m in range(1, movies + 1)
        ),
        encoding="latin-1",
    )
    lines = []
    for user in range(1, users + 1):
        early = rng.choice(np.arange(1, movies - 4), size=18, replace=False)
        late = rng.choice(np.arange(movies - 4, movies + 1), size=2, replace=False)
        for t, movie in enumerate([*early, *late]):
            lines.append(f"{user}::{movie}::{rng.integers(1, 6)}::{1_000_000 + 100 * t + user}\n")
    (directory / "ratings.dat").write_text("".join(lines), encoding="latin-1")
    return directory


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], Path]:
    root = tmp_path_factory.mktemp("experiments")
    movielens = _fabricate_movielens(root / "ml-1m")
    doc = root / "EXPERIMENTS.md"
    doc.write_text(f"# Notes kept\n\n{DOC_BEGIN}\nold numbers\n{DOC_END}\n\nTrailing notes kept.\n")
    out = root / "reports"
    code = main(
        [
            "experiments",
            "--quick",
            "--datasets",
            f"synthetic,entities,movielens:{movielens}",
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
    return out, json.loads((out / "summary.json").read_text()), doc


@pytest.mark.slow
def test_quick_run_produces_every_table_row(quick_run: tuple[Path, dict[str, Any], Path]) -> None:
    _, summary, _ = quick_run
    plan = quick_plan()
    final = summary["backbone"]["num_layers"]
    assert summary["backbone"]["swept_layers"] == list(range(1, final + 1))
    assert list(summary["datasets"]) == ["synthetic", "entities", "movielens-1m"]
    for name, result in summary["datasets"].items():
        sweep = {(r["kind"], r["layer"]) for r in result["sweep"]}
        assert sweep == {("ids", None)} | {
            (kind, layer) for layer in range(1, final + 1) for kind in ("full", "pca")
        }
        mid = result["mid_layer"]
        assert 1 <= mid < final, name

        table = {(r["kind"], r["layer"], r["k"], bool(r["settings"])) for r in result["compression"]}
        expected = {("ids", None, None, False), ("full", final, None, False)}
        for k in plan.dims:
            expected |= {
                ("pca", final, k, False),
                ("trained", final, k, True),  # the linear compressor: no A, beta 0
                ("pca", mid, k, False),
                ("trained", mid, k, False),  # MARC with its defaults
            }
        assert table == expected, name

        ablations = [(r["kind"], r["layer"], r["settings"]) for r in result["ablations"]]
        # MARC is also cut at the served layer and at half depth, unless that is the mid/final layer.
        checks = [layer for layer in dict.fromkeys([summary["layer_choice"]["layer"], final // 2])]
        assert ablations == [
            ("trained", mid, {}),
            ("trained", mid, {"recon_weight": plan.recon_weight}),
            ("trained", mid, {"use_adapter": False}),
            ("trained", mid, {"beta": 0.0}),
            ("trained", mid, {"adapter_layers": 1}),
            ("trained", final, {}),
            *[("trained", layer, {}) for layer in checks if layer not in (mid, final)],
            ("lora", mid, {"epochs": 1}),
            ("lora", final, {"epochs": 1}),
        ], name
        assert [r["settings"]["beta"] for r in result["beta"]] == [0.0, 0.001, 0.01], name

        for record in [*result["sweep"], *result["compression"], *result["ablations"], *result["beta"]]:
            seeds = [0] if record["kind"] == "lora" else list(plan.seeds)
            assert record["seeds"] == seeds, record["label"]
            for key in ("auc_cold", "auc_warm", "logloss_cold", "logloss_warm", "valid_auc_cold"):
                assert isinstance(record[key], float), (record["label"], key)
            assert record["bytes_per_item_fp32"] == 4 * record["dim"]
            if record["kind"] in ("trained", "lora"):
                assert record["train"]["best_epoch"] >= 1, record["label"]

    choice = summary["layer_choice"]
    assert choice["layer"] in summary["backbone"]["swept_layers"]
    assert set(choice["mid_layer_by_dataset"]) == set(summary["datasets"])
    assert {"total_seconds", "pooled_states_seconds"} <= set(summary["timings"])
    assert summary["jobs"]["reused_from_previous_run"] == 0 and summary["jobs"]["total"] > 0


@pytest.mark.slow
def test_quick_run_writes_plots_markdown_and_doc(quick_run: tuple[Path, dict[str, Any], Path]) -> None:
    out, summary, doc = quick_run
    results = (out / "results.md").read_text()
    for slug in ("synthetic", "entities", "movielens-1m"):
        for plot in ("sweep", "compression", "beta"):
            path = out / f"{plot}-{slug}.png"
            assert path.read_bytes()[:8] == PNG_MAGIC, path
            assert f"]({plot}-{slug}.png)" in results
    for result in summary["datasets"].values():
        for record in [*result["compression"], *result["ablations"], *result["beta"]]:
            assert f"| {record['label']} |" in results, record["label"]
    assert results.count("**Claim 1") == results.count("**Claim 3") == len(summary["datasets"])

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
    sweep = [_record(1, "pca", 0.60), _record(2, "pca", 0.70), _record(3, "pca", float("nan"))]
    sweep += [_record(4, "pca", 0.90), _record(2, "full", 0.99)]
    assert choose_mid_layer(sweep, final=4) == 2  # best non-final PCA layer by valid; NaN never wins
    other = [_record(1, "pca", 0.80), _record(2, "pca", 0.65), _record(4, "pca", 0.62)]
    choice = choose_served_layer(
        {"a": {"sweep": sweep, "mid_layer": 2}, "b": {"sweep": other, "mid_layer": 1}}
    )
    # Means over the datasets: L1 0.70, L2 0.675, L4 0.76 (L3 is not scored on both): the served
    # layer may be the final one when the data say so.
    assert choice["layer"] == 4
    assert choice["mean_valid_auc_cold_by_layer"] == {"1": 0.7, "2": 0.675, "4": 0.76}
    assert choice["mid_layer_by_dataset"] == {"a": 2, "b": 1}


def test_compare_calls_a_gap_only_beyond_seed_noise_and_the_minimum_gap() -> None:
    a = {"auc_cold": 0.70, "auc_cold_std": 0.01, "seeds": [0, 1, 2]}
    assert compare(a, {**a, "auc_cold": 0.69})[2] == "tie"  # 0.01 < 2 * sqrt(2 * 0.01^2 / 3)
    assert compare(a, {**a, "auc_cold": 0.65})[2] == "better"
    assert compare({**a, "auc_cold": 0.60}, a)[2] == "worse"
    one_seed = {"auc_cold": 0.70, "auc_cold_std": 0.0, "seeds": [0]}
    assert compare(one_seed, {**one_seed, "auc_cold": 0.697})[2] == "tie"  # below MIN_GAP


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
    plan = quick_plan(datasets=("synthetic", "entities"))
    previous = previous_results(out / "summary.json", plan)
    jobs = sum(len(r["runs"]) for d in list(summary["datasets"].values())[:2] for t in TABLES for r in d[t])
    assert len(previous) == len(set(previous)) and 0 < len(previous) <= jobs
    rerun = run_experiments(plan, previous=previous)  # nothing left to train or evaluate
    assert rerun["jobs"]["reused_from_previous_run"] == rerun["jobs"]["total"]
    for name in ("synthetic", "entities"):
        for table in TABLES:
            assert [r["auc_cold"] for r in rerun["datasets"][name][table]] == [
                r["auc_cold"] for r in summary["datasets"][name][table]
            ]
    # Other result settings: nothing is reused.
    assert previous_results(out / "summary.json", quick_plan(train_epochs=3)) == {}
