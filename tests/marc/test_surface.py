"""The surface-form baseline: features of a text's form alone, the person oracle on `entities`, and
`marc data surface` (cold AUC with item-bootstrap CIs and a paired verdict against ids only)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from marc.baselines import SURFACE_FEATURES, person_oracle_vectors, surface_vectors
from marc.data import load_dataset, make_entities, make_synthetic
from marc.data.entities import ENTITIES, PERSON_CATEGORIES
from marc.predictions import load_predictions
from marc_serve.cli import main as marc_main


def _features(text: str) -> dict[str, float]:
    return dict(zip(SURFACE_FEATURES, surface_vectors([text])[0].tolist(), strict=True))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Leonardo da Vinci", {"words": 3, "person_like": 1, "has_name_particle": 1, "single_word": 0}),
        ("The Godfather", {"starts_with_article": 1, "person_like": 0, "words": 2}),
        ("Beyoncé", {"single_word": 1, "has_non_ascii": 1, "person_like": 0, "characters": 7}),
        ("J. K. Rowling", {"has_initials": 1, "has_punctuation": 1, "person_like": 1}),
        (
            "Usual Suspects, The (1995)",
            {"year": 1995, "has_year": 1, "trailing_article": 1, "has_parenthesis": 0},
        ),
        ("Shanghai Triad (Yao a yao yao dao waipo qiao) (1995)", {"has_parenthesis": 1, "year": 1995}),
        ("unkonwn", {"year": 0, "has_year": 0, "capitalised_share": 0, "vowel_share": 2 / 7}),
        ("Apollo 13 (1995)", {"has_digit": 1, "person_like": 0}),
    ],
)
def test_surface_features_read_the_form(text: str, expected: dict[str, float]) -> None:
    got = _features(text)
    for name, value in expected.items():
        assert got[name] == pytest.approx(value), name


def test_person_oracle_knows_the_hidden_category_and_needs_the_generator_meta() -> None:
    ds = make_entities(seed=0)
    people = {name for category in PERSON_CATEGORIES for name in ENTITIES[category]}
    oracle = person_oracle_vectors(ds)
    assert oracle.shape == (ds.num_items, 1)
    assert oracle[:, 0].tolist() == [float(text in people) for text in ds.item_texts]
    assert set(PERSON_CATEGORIES) < set(ENTITIES)
    with pytest.raises(ValueError, match="needs the entities generator's meta"):
        person_oracle_vectors(make_synthetic(num_items=50, num_users=20))


def test_person_like_form_agrees_with_the_oracle_on_most_entities() -> None:
    # The leak the surface baseline measures: the form alone tells people from things most of the time.
    ds = make_entities(seed=0)
    person_like = surface_vectors(ds.item_texts)[:, SURFACE_FEATURES.index("person_like")]
    agreement = float((person_like == person_oracle_vectors(ds)[:, 0]).mean())
    assert 0.75 < agreement < 0.95


@pytest.mark.slow
def test_cli_surface_scores_every_row_with_cis_and_writes_predictions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "entities"
    assert marc_main(["data", "synth", "--kind", "entities", "--users", "200", "--out", str(data)]) == 0
    capsys.readouterr()
    out = tmp_path / "predictions"
    assert marc_main(["data", "surface", f"jsonl:{data}", "--seeds", "0,1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    rows = {line.split(" | ")[0].strip("| "): line for line in printed.splitlines() if line.startswith("| ")}
    assert {"ids only", "surface form", "person-like form", "person oracle"} <= set(rows)
    # ids only against itself: exactly zero, no difference.
    assert "+0.0000 [+0.0000, +0.0000] | no difference" in rows["ids only"]
    dataset = load_dataset(f"jsonl:{data}")
    cold_test = dataset.cold(dataset.test)
    assert f"{len(cold_test)} cold test rows on {len(np.unique(cold_test.items))} cold test items" in printed
    for slug in ("ids-only", "surface-form", "person-like-form", "person-oracle"):
        for seed in (0, 1):
            predictions = load_predictions(out / "entities" / f"{slug}-seed{seed}.npz")
            assert np.array_equal(predictions.labels, dataset.test.labels)
            assert predictions.meta["seed"] == seed


def test_cli_surface_rejects_bad_seeds(capsys: pytest.CaptureFixture[str]) -> None:
    assert marc_main(["data", "surface", "entities", "--seeds", "a,b"]) == 2
    assert "seeds must be comma-separated integers" in capsys.readouterr().err
