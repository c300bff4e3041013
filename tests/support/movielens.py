"""Small MovieLens-like catalogues written in the ML-1M, RecBole and GroupLens layouts, and a check
of every property of the item-cold protocol against the raw ratings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from marc.data import Interactions, RecDataset
from marc.data.movielens100k import GROUPLENS_GENRES

ITEM_HEADER = "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
GENRES = ["Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi"]


@dataclass
class Ratings:
    """A small MovieLens-like catalogue: movies (id, title, year, genres), users (id, gender, age,
    occupation) and ratings (user, movie, rating, timestamp) with unique (user, movie) pairs."""

    movies: list[tuple[int, str, int, list[str]]]
    users: list[tuple[int, str, int, int]]
    ratings: list[tuple[int, int, int, int]]

    def lookup(self) -> dict[tuple[str, str], tuple[int, int]]:
        return {(str(u), str(m)): (r, t) for u, m, r, t in self.ratings}


def fabricate(movies: int = 60, users: int = 40, per_user: int = 25, seed: int = 0) -> Ratings:
    rng = np.random.default_rng(seed)
    catalogue = [
        (10 + m, f"Film number {m}", 1950 + m, sorted({GENRES[m % 6], GENRES[(m * 5) % 6]}))
        for m in range(movies - 1)
    ]
    catalogue[2] = (12, "Café Society", 1995, ["Drama"])  # latin-1 in ML-1M and GroupLens, UTF-8 in RecBole
    catalogue.append((10 + movies - 1, "Never Rated", 1999, ["Drama"]))  # no ratings at all
    people = [(100 + u, "FM"[u % 2], 18 + u, u % 7) for u in range(users)]
    rows = []
    for user, *_ in people:
        chosen = rng.choice(movies - 1, size=per_user, replace=False)
        times = rng.permutation(per_user) * 1000 + user  # distinct per user, not in file order
        rows += [
            (user, 10 + int(m), int(rng.integers(1, 6)), int(t)) for m, t in zip(chosen, times, strict=True)
        ]
    return Ratings(catalogue, people, rows)


def write_ml1m(fab: Ratings, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "movies.dat").write_text(
        "".join(f"{m}::{title} ({year})::{'|'.join(g)}\n" for m, title, year, g in fab.movies), "latin-1"
    )
    (directory / "users.dat").write_text(
        "".join(f"{u}::{sex}::{age}::{job}::12345\n" for u, sex, age, job in fab.users), "latin-1"
    )
    (directory / "ratings.dat").write_text(
        "".join(f"{u}::{m}::{r}::{t}\n" for u, m, r, t in fab.ratings), "latin-1"
    )
    return directory


def write_recbole(fab: Ratings, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "ml-100k.item").write_text(
        ITEM_HEADER + "".join(f"{m}\t{title}\t{year}\t{' '.join(g)}\n" for m, title, year, g in fab.movies),
        "utf-8",
    )
    (directory / "ml-100k.user").write_text(
        "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
        + "".join(f"{u}\t{age}\t{sex}\tjob{job}\t12345\n" for u, sex, age, job in fab.users),
        "utf-8",
    )
    # Columns in another order than RecBole's: the loader finds them by the header.
    (directory / "ml-100k.inter").write_text(
        "rating:float\tuser_id:token\ttimestamp:float\titem_id:token\n"
        + "".join(f"{r}\t{u}\t{t}\t{m}\n" for u, m, r, t in fab.ratings),
        "utf-8",
    )
    return directory


def grouplens_item_line(movie_id: int, title: str, year: str, genres: list[str]) -> str:
    flags = "|".join("1" if g in genres else "0" for g in GROUPLENS_GENRES)
    shown, date = (f"{title} ({year})", f"01-Jan-{year}") if year.isdigit() else (title, "")
    return f"{movie_id}|{shown}|{date}||http://us.imdb.com/M/title-exact?{movie_id}|{flags}\n"


def write_grouplens(fab: Ratings, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "u.item").write_text(
        "".join(grouplens_item_line(m, title, str(year), g) for m, title, year, g in fab.movies), "latin-1"
    )
    (directory / "u.user").write_text(
        "".join(f"{u}|{age}|{sex}|job{job}|12345\n" for u, sex, age, job in fab.users), "latin-1"
    )
    (directory / "u.data").write_text(
        "".join(f"{u}\t{m}\t{r}\t{t}\n" for u, m, r, t in fab.ratings), "latin-1"
    )
    return directory


WRITERS = {"ml-1m": write_ml1m, "recbole": write_recbole, "grouplens": write_grouplens}
SPEC_KIND = {"ml-1m": "movielens", "recbole": "movielens100k", "grouplens": "movielens100k"}


def split_rows(split: Interactions) -> list[tuple[int, int, float]]:
    return list(zip(split.users.tolist(), split.items.tolist(), split.labels.tolist(), strict=True))


def check_protocol(ds: RecDataset, fab: Ratings, cold_fraction: float = 0.2) -> None:
    """Every property of the item-cold protocol, checked against the raw ratings."""
    lookup = fab.lookup()
    user_ids, item_ids = ds.meta["user_ids"], ds.item_ids
    item_index = {item_id: i for i, item_id in enumerate(item_ids)}
    rated = np.isin(np.arange(ds.num_items), [item_index[str(m)] for _, m, _, _ in fab.ratings])
    held_out = ds.meta["held_out_items"]
    # 20% of the rated items are held out (the never-rated movie is never drawn).
    assert held_out.sum() == round(cold_fraction * rated.sum()) and not held_out[~rated].any()
    # Disjoint item sets: no held-out item in train; each held-out item in valid or test, not both.
    assert not held_out[ds.train.items].any()
    valid_cold = set(ds.valid.items[held_out[ds.valid.items]].tolist())
    test_cold = set(ds.test.items[held_out[ds.test.items]].tolist())
    assert not valid_cold & test_cold and valid_cold | test_cold == set(np.flatnonzero(held_out).tolist())
    assert len(valid_cold) == held_out.sum() // 2
    assert ds.cold_items[held_out].all() and not ds.cold_items[ds.train.items].any()
    # Every rating is in exactly one split; positive = rating >= 4.
    seen = []
    for split in (ds.train, ds.valid, ds.test):
        for user, item, label in split_rows(split):
            rating, _ = lookup[(user_ids[user], item_ids[item])]
            assert label == float(rating >= 4)
            seen.append((user, item))
    assert len(seen) == len(set(seen)) == len(fab.ratings)
    # Other rows: per user by time, the last 10% test, the last 10% of the rest valid.
    for user in range(ds.num_users):
        times = {}
        for name, split in (("train", ds.train), ("valid", ds.valid), ("test", ds.test)):
            mask = (split.users == user) & ~held_out[split.items]
            times[name] = sorted(lookup[(user_ids[user], item_ids[i])][1] for i in split.items[mask])
        warm = sum(len(t) for t in times.values())
        assert len(times["test"]) == warm // 10
        assert len(times["valid"]) == (warm - warm // 10) // 10
        ordered = times["train"] + times["valid"] + times["test"]
        assert ordered == sorted(ordered), f"user {user_ids[user]}: splits not in time order"
