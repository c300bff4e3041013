"""The content baselines (`marc.content_baselines`): genre + year read from MovieLens, TF-IDF + SVD
and PCA-like fitting on warm items only (a cold item's text changes nothing of the others'
vectors), random vectors fixed by their seed."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from marc.content_baselines import DECADES, genre_year_vectors, random_vectors, tfidf_vectors
from marc.data import load_dataset, make_synthetic
from tests.support.movielens import GENRES, fabricate, write_recbole


@pytest.fixture(scope="module")
def movielens(tmp_path_factory: pytest.TempPathFactory):
    root = write_recbole(
        fabricate(movies=60, users=40, per_user=25), tmp_path_factory.mktemp("ml") / "ml-100k"
    )
    return load_dataset(f"movielens100k:{root}?text=title")


def test_genre_year_holds_each_items_genres_year_and_decade(movielens) -> None:
    vectors = genre_year_vectors(movielens)
    names = sorted({g for item in movielens.meta["item_genres"] for g in item})
    assert set(names) <= set(GENRES)
    assert vectors.shape == (movielens.num_items, len(names) + 2 + len(DECADES))
    for i, genres in enumerate(movielens.meta["item_genres"]):
        assert [names[j] for j in np.flatnonzero(vectors[i, : len(names)])] == sorted(genres)
        assert vectors[i, len(names) + 1 :].sum() == 1.0  # one decade (or the "no year" flag)
    cafe = movielens.item_texts.index("Café Society (1995)")
    assert vectors[cafe, len(names)] == pytest.approx(0.5)
    assert vectors[cafe, len(names) + 1 + DECADES.index(1990)] == 1.0


def test_genre_year_needs_genres() -> None:
    with pytest.raises(ValueError, match="no item genres"):
        genre_year_vectors(make_synthetic(num_items=40, num_users=20, interactions_per_user=5))


def test_tfidf_is_fitted_on_warm_items_only(movielens) -> None:
    vectors = tfidf_vectors(movielens, 8)
    assert vectors.shape == (movielens.num_items, 8)
    cold = np.flatnonzero(movielens.cold_items)
    texts = list(movielens.item_texts)
    for i in cold:
        texts[i] = "zebra zebra unseen words"
    changed = tfidf_vectors(replace(movielens, item_texts=texts), 8)
    warm = ~movielens.cold_items
    assert np.allclose(vectors[warm], changed[warm], atol=1e-6)
    assert np.abs(changed[cold]).sum() < np.abs(vectors[cold]).sum()  # unseen words: nothing to project


def test_random_vectors_are_fixed_by_seed_and_differ_across_seeds() -> None:
    a, b = random_vectors(50, 16, 0), random_vectors(50, 16, 1)
    assert a.shape == (50, 16) and a.dtype == np.float32
    assert np.array_equal(a, random_vectors(50, 16, 0)) and not np.allclose(a, b)
