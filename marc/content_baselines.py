"""Item vectors a recommender team builds without an LLM, scored against MARC in the same harness
(`marc.experiments`): genre multi-hot + release year (MovieLens), TF-IDF of the item text reduced to
k by truncated SVD, and random vectors of size k (a control: what k free dimensions give by
themselves). Anything fitted is fitted on the train (warm) items only, as PCA is
(`marc.evaluate.pca_vectors`): nothing about the cold test items leaks into their features."""

from __future__ import annotations

import re

import numpy as np
from sklearn.decomposition import TruncatedSVD
from sklearn.feature_extraction.text import TfidfVectorizer

from marc.data import RecDataset

YEAR = re.compile(r"\((\d{4})\)")
"""The release year in a MovieLens text: "Toy Story (1995)" (both item texts start with the title)."""

DECADES = tuple(range(1920, 2010, 10))
"""Decade bins of the year one-hot (years before 1920 fall in the first, after 2009 in the last)."""


def genre_year_vectors(dataset: RecDataset) -> np.ndarray:
    """[num_items, genres + 1 + decades + 1]: the genre multi-hot, the year (centred, in decades), its
    decade one-hot and a "no year" flag. Needs the genres in ``dataset.meta['item_genres']`` (the
    MovieLens loaders put them there)."""
    genres = dataset.meta.get("item_genres")
    if genres is None:
        raise ValueError(f"dataset {dataset.name!r} has no item genres (meta['item_genres'])")
    names = sorted({g for item in genres for g in item})
    column = {name: j for j, name in enumerate(names)}
    out = np.zeros((dataset.num_items, len(names) + 2 + len(DECADES)), dtype=np.float32)
    for i, (item_genres, text) in enumerate(zip(genres, dataset.item_texts, strict=True)):
        out[i, [column[g] for g in item_genres]] = 1.0
        match = YEAR.search(text)
        if match is None:
            out[i, -1] = 1.0
            continue
        year = int(match.group(1))
        out[i, len(names)] = (year - 1990) / 10
        decade = min(max(year // 10 * 10, DECADES[0]), DECADES[-1])
        out[i, len(names) + 1 + DECADES.index(decade)] = 1.0
    return out


def tfidf_vectors(dataset: RecDataset, dim: int, seed: int = 0) -> np.ndarray:
    """TF-IDF of the item texts (words and word pairs, sublinear tf) reduced to ``dim`` by truncated
    SVD (LSA); vocabulary, idf and SVD fitted on the warm items."""
    fit_rows = ~dataset.cold_items
    texts = np.asarray(dataset.item_texts, dtype=object)
    tfidf = TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True).fit(texts[fit_rows])
    matrix = tfidf.transform(texts)
    dim = min(dim, matrix.shape[1] - 1, int(fit_rows.sum()) - 1)
    svd = TruncatedSVD(n_components=dim, random_state=seed).fit(matrix[fit_rows])
    return svd.transform(matrix).astype(np.float32)


def random_vectors(num_items: int, dim: int, seed: int) -> np.ndarray:
    """Standard normal vectors, one per item, fixed by ``seed``: no information about the items."""
    return np.random.default_rng([seed, dim]).standard_normal((num_items, dim)).astype(np.float32)
