"""MovieLens-1M loader (`movies.dat`, `ratings.dat`, optional `users.dat`; '::'-separated, latin-1).

Item text = "<Title>. Genres: <g1>, <g2>". Positive = rating > 3. Split by user 9:1 as in the KAR
line of work: each user's ratings sorted by timestamp, the first 90% for training (of which the
last 10% become validation), the last 10% test. Cold items = movies that never appear in train.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from marc.data.dataset import RecDataset
from marc.data.splits import assign_time_split, never_in_train, split_rows
from records.errors import DataError, require_file

MOVIES_FIELDS = ("MovieID", "Title", "Genres")
RATINGS_FIELDS = ("UserID", "MovieID", "Rating", "Timestamp")
USERS_FIELDS = ("UserID", "Gender", "Age", "Occupation", "Zip-code")
POSITIVE_ABOVE = 3  # ratings 4 and 5 are clicks


def _iter_rows(
    path: Path, fields: tuple[str, ...], progress: bool = False
) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) per non-blank line; a wrong field count raises `DataError`."""
    with path.open(encoding="latin-1") as handle:
        lines = tqdm(
            handle, desc=path.name, unit=" lines", leave=False, disable=not progress, delay=1, mininterval=1
        )
        for line_number, line in enumerate(lines, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            parts = line.split("::")
            if len(parts) != len(fields):
                raise DataError.at(
                    path,
                    line_number,
                    f"expected {len(fields)} '::'-separated fields ({'::'.join(fields)}), got {len(parts)}",
                )
            yield line_number, parts


def _int_field(value: str, field: str, path: Path, line: int) -> int:
    try:
        return int(value)
    except ValueError:
        raise DataError.at(path, line, f"field '{field}' must be an integer, got {value!r}") from None


def _read_movies(path: Path) -> tuple[list[str], list[str]]:
    ids: list[str] = []
    texts: list[str] = []
    seen: set[int] = set()
    for line, (movie_id, title, genres) in _iter_rows(path, MOVIES_FIELDS):
        number = _int_field(movie_id, "MovieID", path, line)
        if number in seen:
            raise DataError.at(path, line, f"field 'MovieID': duplicate movie id {number}")
        if not title.strip():
            raise DataError.at(path, line, "field 'Title' is empty")
        genre_list = [g for g in genres.split("|") if g.strip()]
        if not genre_list:
            raise DataError.at(path, line, "field 'Genres' is empty")
        seen.add(number)
        ids.append(str(number))
        texts.append(f"{title.strip()}. Genres: {', '.join(genre_list)}")
    if not ids:
        raise DataError.at(path, None, "no movies")
    return ids, texts


def _read_users(path: Path) -> tuple[list[str], dict[str, np.ndarray]]:
    """User ids in file order and their side features (gender 0/1 for F/M, age code, occupation)."""
    ids: list[str] = []
    gender: list[int] = []
    age: list[int] = []
    occupation: list[int] = []
    seen: set[int] = set()
    for line, (user_id, sex, age_code, job, _zip) in _iter_rows(path, USERS_FIELDS):
        number = _int_field(user_id, "UserID", path, line)
        if number in seen:
            raise DataError.at(path, line, f"field 'UserID': duplicate user id {number}")
        if sex not in ("F", "M"):
            raise DataError.at(path, line, f"field 'Gender' must be 'F' or 'M', got {sex!r}")
        seen.add(number)
        ids.append(str(number))
        gender.append(int(sex == "M"))
        age.append(_int_field(age_code, "Age", path, line))
        occupation.append(_int_field(job, "Occupation", path, line))
    features = {
        "user_gender": np.asarray(gender, dtype=np.int64),
        "user_age": np.asarray(age, dtype=np.int64),
        "user_occupation": np.asarray(occupation, dtype=np.int64),
    }
    return ids, features


def load_movielens(directory: str | Path) -> RecDataset:
    """Load MovieLens-1M from `directory`; raises `DataError` naming file, line and field on bad input."""
    directory = Path(directory)
    movies_path = require_file(directory / "movies.dat", "MovieLens movies")
    ratings_path = require_file(directory / "ratings.dat", "MovieLens ratings")
    users_path = directory / "users.dat"

    item_ids, item_texts = _read_movies(movies_path)
    item_index = {item_id: i for i, item_id in enumerate(item_ids)}
    user_features: dict[str, np.ndarray] = {}
    known_users: dict[str, int] | None = None
    if users_path.is_file():
        listed, user_features = _read_users(users_path)
        known_users = {user_id: u for u, user_id in enumerate(listed)}

    raw_users: list[str] = []
    items: list[int] = []
    ratings: list[int] = []
    timestamps: list[int] = []
    for line, (user_id, movie_id, rating, timestamp) in _iter_rows(
        ratings_path, RATINGS_FIELDS, progress=True
    ):
        user = str(_int_field(user_id, "UserID", ratings_path, line))
        if known_users is not None and user not in known_users:
            raise DataError.at(
                ratings_path, line, f"field 'UserID': unknown user id {user} (not in users.dat)"
            )
        movie = str(_int_field(movie_id, "MovieID", ratings_path, line))
        if movie not in item_index:
            raise DataError.at(
                ratings_path, line, f"field 'MovieID': unknown movie id {movie} (not in movies.dat)"
            )
        value = _int_field(rating, "Rating", ratings_path, line)
        if not 1 <= value <= 5:
            raise DataError.at(ratings_path, line, f"field 'Rating' must be 1-5, got {value}")
        raw_users.append(user)
        items.append(item_index[movie])
        ratings.append(value)
        timestamps.append(_int_field(timestamp, "Timestamp", ratings_path, line))
    if not ratings:
        raise DataError.at(ratings_path, None, "no ratings")

    if known_users is None:
        # Without users.dat, users are indexed in numeric id order.
        user_ids = sorted(set(raw_users), key=int)
        known_users = {user_id: u for u, user_id in enumerate(user_ids)}
    else:
        user_ids = list(known_users)
    users = np.asarray([known_users[u] for u in raw_users], dtype=np.int64)
    item_array = np.asarray(items, dtype=np.int64)
    labels = (np.asarray(ratings) > POSITIVE_ABOVE).astype(np.float32)
    codes = assign_time_split(users, np.asarray(timestamps, dtype=np.int64))
    train, valid, test = split_rows(users, item_array, labels, codes)
    meta = {
        "source": str(directory),
        "format": "movielens-1m",
        "positive": f"rating > {POSITIVE_ABOVE}",
        "split": "per user by timestamp: first 90% train (its last 10% valid), last 10% test",
        "user_ids": user_ids,
        **user_features,
    }
    return RecDataset(
        name="movielens-1m",
        item_ids=item_ids,
        item_texts=item_texts,
        num_users=len(user_ids),
        train=train,
        valid=valid,
        test=test,
        cold_items=never_in_train(len(item_ids), train),
        meta=meta,
    )
