"""MovieLens-1M loader (`movies.dat`, `ratings.dat`, optional `users.dat`; '::'-separated, latin-1).

Titles in movies.dat already end in the year ("Toy Story (1995)"). The split, the positive label
and the two item texts are the item-cold protocol of `marc.data.ratings`.
"""

from __future__ import annotations

from pathlib import Path

from marc.data.dataset import RecDataset
from marc.data.delimited import int_field, iter_fields
from marc.data.ratings import (
    COLD_FRACTION,
    DEFAULT_TEXT,
    Movies,
    Ratings,
    RatingsTable,
    Users,
    check_text,
    gender_code,
    item_cold_dataset,
)
from records.errors import require_file

MOVIES_FIELDS = ("MovieID", "Title", "Genres")
RATINGS_FIELDS = ("UserID", "MovieID", "Rating", "Timestamp")
USERS_FIELDS = ("UserID", "Gender", "Age", "Occupation", "Zip-code")


def _read_movies(path: Path) -> Movies:
    movies = Movies(path, MOVIES_FIELDS)
    for line, (movie_id, title, genres) in iter_fields(path, "::", MOVIES_FIELDS):
        number = int_field(movie_id, "MovieID", path, line)
        movies.add(line, number, title, [g for g in genres.split("|") if g.strip()])
    return movies


def _read_users(path: Path) -> Users:
    """User ids in file order and their side features (gender 0/1 for F/M, age code, occupation code)."""
    users = Users(path, "UserID")
    for line, (user_id, sex, age_code, job, _zip) in iter_fields(path, "::", USERS_FIELDS):
        users.add(
            line,
            int_field(user_id, "UserID", path, line),
            gender=gender_code(sex, "Gender", path, line),
            age=int_field(age_code, "Age", path, line),
            occupation=int_field(job, "Occupation", path, line),
        )
    return users


def read_movielens(directory: str | Path) -> RatingsTable:
    """Parse MovieLens-1M from `directory`; raises `DataError` naming file, line and field on bad input."""
    directory = Path(directory)
    movies_path = require_file(directory / "movies.dat", "MovieLens movies")
    ratings_path = require_file(directory / "ratings.dat", "MovieLens ratings")
    users_path = directory / "users.dat"
    movies = _read_movies(movies_path)
    users = _read_users(users_path) if users_path.is_file() else None
    ratings = Ratings(ratings_path, ("UserID", "MovieID", "Rating"), movies, users)
    for line, (user_id, movie_id, rating, timestamp) in iter_fields(
        ratings_path, "::", RATINGS_FIELDS, progress=True
    ):
        ratings.add(
            line,
            int_field(user_id, "UserID", ratings_path, line),
            int_field(movie_id, "MovieID", ratings_path, line),
            int_field(rating, "Rating", ratings_path, line),
            int_field(timestamp, "Timestamp", ratings_path, line),
        )
    return RatingsTable.collect("movielens-1m", directory, "movielens-1m", ratings)


def load_movielens(
    directory: str | Path, text: str = DEFAULT_TEXT, seed: int = 0, cold_fraction: float = COLD_FRACTION
) -> RecDataset:
    """MovieLens-1M from `directory` under the item-cold protocol (`marc.data.ratings`)."""
    check_text(text)
    return item_cold_dataset(read_movielens(directory), text, seed, cold_fraction)
