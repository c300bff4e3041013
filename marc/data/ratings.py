"""Rating files (MovieLens-1M, MovieLens-100K) -> `RecDataset` under the item-cold protocol.

The format-specific loaders parse their files into a `RatingsTable` with the helpers here (which
check ids, duplicates and rating ranges and raise `DataError`s naming file, line and field);
`item_cold_dataset` then applies the one protocol for all real data:

* positive = rating >= 4;
* `cold_fraction` (20%) of the rated items are held out of train (seeded): half of them send all
  their rows to valid, the other half to test, so both measure cold-start;
* every other row is split per user by time: each user's last 10% test, the last 10% of the rest
  valid, the rest train.

Item texts (`text=`): "title" = "Title (Year)" only (the knowledge test: the genre is not in the
text, so a cold film is placed only by what the model knows about it), "kar" = KAR-style
"Title (Year). Genres: g1, g2".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from marc.data.dataset import RecDataset
from marc.data.splits import assign_item_cold_time_split, hold_out_items, never_in_train, split_rows
from records.errors import DataError

ITEM_TEXTS: dict[str, str] = {
    "kar": "KAR-style 'Title (Year). Genres: g1, g2'",
    "title": "'Title (Year)' only (the genre is not in the text)",
}
DEFAULT_TEXT = "kar"
POSITIVE_RATING = 4
COLD_FRACTION = 0.2
SPLIT_RULE = (
    "item-cold: {cold:g} of the rated items held out of train (seed {seed}; half of them all rows to "
    "valid, half to test); other rows per user by time: last 10% test, last 10% of the rest valid"
)


@dataclass
class Movies:
    """The item file: ids in file order, the "Title (Year)" shown to the model, the genres."""

    path: Path
    names: tuple[str, str, str]
    """The file's (id, title, genres) field names, for error messages."""
    ids: list[str] = field(default_factory=list)
    titles: list[str] = field(default_factory=list)
    genres: list[list[str]] = field(default_factory=list)
    index: dict[str, int] = field(default_factory=dict)

    def add(self, line: int, movie_id: int, title: str, genres: list[str]) -> None:
        key = str(movie_id)
        if key in self.index:
            raise DataError.at(self.path, line, f"field '{self.names[0]}': duplicate movie id {key}")
        if not title.strip():
            raise DataError.at(self.path, line, f"field '{self.names[1]}' is empty")
        if not genres:
            raise DataError.at(self.path, line, f"field '{self.names[2]}' is empty")
        self.index[key] = len(self.ids)
        self.ids.append(key)
        self.titles.append(title.strip())
        self.genres.append(genres)

    def texts(self, text: str) -> list[str]:
        if text == "title":
            return list(self.titles)
        return [f"{title}. Genres: {', '.join(g)}" for title, g in zip(self.titles, self.genres, strict=True)]


@dataclass
class Users:
    """The optional user file: ids in file order and per-user side features (`user_<name>` in meta)."""

    path: Path
    id_name: str
    index: dict[str, int] = field(default_factory=dict)
    features: dict[str, list[Any]] = field(default_factory=dict)

    def add(self, line: int, user_id: int, **features: Any) -> None:
        key = str(user_id)
        if key in self.index:
            raise DataError.at(self.path, line, f"field '{self.id_name}': duplicate user id {key}")
        self.index[key] = len(self.index)
        for name, value in features.items():
            self.features.setdefault(name, []).append(value)


def gender_code(value: str, name: str, path: Path, line: int) -> int:
    """0 for 'F', 1 for 'M' (the MovieLens user files' codes)."""
    if value not in ("F", "M"):
        raise DataError.at(path, line, f"field '{name}' must be 'F' or 'M', got {value!r}")
    return int(value == "M")


class Ratings:
    """Rating rows as they are read; checks every id against the movie (and user) files."""

    def __init__(
        self, path: Path, names: tuple[str, str, str], movies: Movies, users: Users | None = None
    ) -> None:
        """`names` = the rating file's (user id, movie id, rating) field names for error messages."""
        if not movies.ids:
            raise DataError.at(movies.path, None, "no movies")
        self.path, self.names, self.movies, self.users = path, names, movies, users
        self.raw_users: list[str] = []
        self.items: list[int] = []
        self.ratings: list[float] = []
        self.timestamps: list[float] = []

    def add(self, line: int, user_id: int, movie_id: int, rating: float, timestamp: float) -> None:
        user_name, movie_name, rating_name = self.names
        user = str(user_id)
        if self.users is not None and user not in self.users.index:
            raise DataError.at(
                self.path,
                line,
                f"field '{user_name}': unknown user id {user} (not in {self.users.path.name})",
            )
        movie = str(movie_id)
        if movie not in self.movies.index:
            raise DataError.at(
                self.path,
                line,
                f"field '{movie_name}': unknown movie id {movie} (not in {self.movies.path.name})",
            )
        if not 1 <= rating <= 5:
            raise DataError.at(self.path, line, f"field '{rating_name}' must be 1-5, got {rating:g}")
        self.raw_users.append(user)
        self.items.append(self.movies.index[movie])
        self.ratings.append(rating)
        self.timestamps.append(timestamp)


@dataclass
class RatingsTable:
    """Parsed rating files before any split."""

    name: str
    """Dataset name for the KAR text, e.g. "movielens-100k" (the title text appends "-title")."""
    source: Path
    file_format: str
    files: list[str]
    movies: Movies
    user_ids: list[str]
    users: np.ndarray
    """int64 index into user_ids, one per rating."""
    items: np.ndarray
    ratings: np.ndarray
    timestamps: np.ndarray
    user_features: dict[str, np.ndarray]

    @classmethod
    def collect(cls, name: str, source: Path, file_format: str, ratings: Ratings) -> RatingsTable:
        """The table from parsed files; users are indexed in user-file order, else in numeric id order."""
        movies, users = ratings.movies, ratings.users
        if not ratings.ratings:
            raise DataError.at(ratings.path, None, "no ratings")
        if users is None:
            user_ids = sorted(set(ratings.raw_users), key=int)
            index = {user_id: u for u, user_id in enumerate(user_ids)}
            features: dict[str, np.ndarray] = {}
        else:
            user_ids, index = list(users.index), users.index
            features = {f"user_{key}": np.asarray(values) for key, values in users.features.items()}
        return cls(
            name=name,
            source=source,
            file_format=file_format,
            files=[str(movies.path), str(ratings.path), *([str(users.path)] if users else [])],
            movies=movies,
            user_ids=user_ids,
            users=np.asarray([index[u] for u in ratings.raw_users], dtype=np.int64),
            items=np.asarray(ratings.items, dtype=np.int64),
            ratings=np.asarray(ratings.ratings, dtype=np.float64),
            timestamps=np.asarray(ratings.timestamps, dtype=np.float64),
            user_features=features,
        )

    @property
    def num_users(self) -> int:
        return len(self.user_ids)


def check_text(text: str) -> str:
    if text not in ITEM_TEXTS:
        options = ", ".join(f"'{key}' ({what})" for key, what in ITEM_TEXTS.items())
        raise DataError(f"unknown item text {text!r}: expected one of {options}")
    return text


def item_cold_dataset(
    table: RatingsTable, text: str = DEFAULT_TEXT, seed: int = 0, cold_fraction: float = COLD_FRACTION
) -> RecDataset:
    """`table` split by the item-cold protocol (module docstring), deterministic by `seed`."""
    check_text(text)
    if not 0.0 < cold_fraction < 1.0:
        raise ValueError(f"cold_fraction must be in (0, 1), got {cold_fraction}")
    num_items = len(table.movies.ids)
    rated = np.zeros(num_items, dtype=bool)
    rated[table.items] = True
    rng = np.random.default_rng(seed)
    held_out = hold_out_items(num_items, cold_fraction, rng, eligible=rated)
    codes = assign_item_cold_time_split(table.users, table.items, table.timestamps, held_out, rng)
    labels = (table.ratings >= POSITIVE_RATING).astype(np.float32)
    train, valid, test = split_rows(table.users, table.items, labels, codes)
    meta = {
        "source": str(table.source),
        "format": table.file_format,
        "files": table.files,
        "text": text,
        "text_rule": ITEM_TEXTS[text],
        "positive": f"rating >= {POSITIVE_RATING}",
        "split": SPLIT_RULE.format(cold=cold_fraction, seed=seed),
        "seed": seed,
        "cold_fraction": cold_fraction,
        "held_out_items": held_out,
        "user_ids": table.user_ids,
        "item_genres": [list(g) for g in table.movies.genres],
        **table.user_features,
    }
    return RecDataset(
        name=table.name if text == DEFAULT_TEXT else f"{table.name}-{text}",
        item_ids=list(table.movies.ids),
        item_texts=table.movies.texts(text),
        num_users=table.num_users,
        train=train,
        valid=valid,
        test=test,
        cold_items=never_in_train(num_items, train),
        meta=meta,
    )
