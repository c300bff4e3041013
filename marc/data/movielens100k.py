"""MovieLens-100K loader for its two common layouts (auto-detected in the given directory):

* RecBole atomic files (what `marc data get ml-100k` extracts from the `recbole` wheel), UTF-8,
  tab-separated, a typed header line (`user_id:token`, `rating:float`, ...), columns found by name:
  `ml-100k.inter` (user_id, item_id, rating, timestamp), `ml-100k.item` (item_id, movie_title,
  release_year, class = space-separated genres), optional `ml-100k.user` (user_id, age, gender,
  occupation, zip_code).
* GroupLens files (from `ml-100k.zip`), latin-1, no header: `u.data` (user id, item id, rating,
  timestamp; tab-separated), `u.item` (movie id | title | release date | video release date |
  IMDb URL | 19 genre flags), optional `u.user` (user id | age | gender | occupation | zip code).

The split, the positive label and the two item texts are the item-cold protocol of
`marc.data.ratings`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from marc.data.dataset import RecDataset
from marc.data.delimited import float_field, int_field, iter_fields
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
from records.errors import DataError, require_file

NAME = "movielens-100k"
RECBOLE_FILES = {"ratings": "ml-100k.inter", "movies": "ml-100k.item", "users": "ml-100k.user"}
GROUPLENS_FILES = {"ratings": "u.data", "movies": "u.item", "users": "u.user"}
# The columns read from each file, by the layout's own field names (ids first).
RECBOLE_COLUMNS = {
    "ratings": ("user_id", "item_id", "rating", "timestamp"),
    "movies": ("item_id", "movie_title", "release_year", "class"),
    "users": ("user_id", "age", "gender", "occupation"),
}
# u.item's 19 genre flags, in file order (the list in the GroupLens README and u.genre).
GROUPLENS_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
    "War", "Western",
)  # fmt: skip
GROUPLENS_COLUMNS = {
    "ratings": ("user id", "item id", "rating", "timestamp"),
    "movies": (
        "movie id",
        "movie title",
        "release date",
        "video release date",
        "IMDb URL",
        *GROUPLENS_GENRES,
    ),
    "users": ("user id", "age", "gender", "occupation", "zip code"),
}
_YEAR = re.compile(r"\d{4}")
Rows = Iterator[tuple[int, dict[str, str]]]


def detect_format(directory: Path) -> str:
    """'recbole' or 'grouplens': which layout `directory` holds (RecBole when it holds both)."""
    for layout, files in (("recbole", RECBOLE_FILES), ("grouplens", GROUPLENS_FILES)):
        if (directory / files["ratings"]).is_file() and (directory / files["movies"]).is_file():
            return layout
    if not directory.is_dir():
        raise DataError(f"MovieLens-100K directory not found: {directory}")
    raise DataError(
        f"no MovieLens-100K files in {directory}: expected {RECBOLE_FILES['ratings']} + "
        f"{RECBOLE_FILES['movies']} (RecBole atomic files) or {GROUPLENS_FILES['ratings']} + "
        f"{GROUPLENS_FILES['movies']} (GroupLens ml-100k.zip); fetch them with `marc data get ml-100k`"
    )


def _recbole_rows(path: Path, role: str) -> Rows:
    """(line number, {column: value}) for the columns of `RECBOLE_COLUMNS[role]`, found by the header."""
    with path.open("rb") as handle:
        first = handle.readline()
    try:
        header = first.decode("utf-8").rstrip("\r\n").split("\t")
    except UnicodeDecodeError as error:
        raise DataError.at(path, 1, f"not valid utf-8 ({error.reason})") from None
    names = []
    for column in header:
        name, colon, kind = column.partition(":")
        if not (name and colon and kind):
            raise DataError.at(
                path,
                1,
                f"header field {column!r} is not 'name:type' (a RecBole atomic file starts with a typed "
                "header such as 'user_id:token')",
            )
        names.append(name)
    wanted = RECBOLE_COLUMNS[role]
    missing = [name for name in wanted if name not in names]
    if missing:
        raise DataError.at(path, 1, f"header lacks field '{missing[0]}' (header: {', '.join(header)})")
    positions = [names.index(name) for name in wanted]
    rows = iter_fields(path, "\t", names, encoding="utf-8", skip_lines=1, progress=role == "ratings")
    for line, parts in rows:
        yield line, {name: parts[k] for name, k in zip(wanted, positions, strict=True)}


def _grouplens_rows(path: Path, role: str) -> Rows:
    separator = "\t" if role == "ratings" else "|"
    names = GROUPLENS_COLUMNS[role]
    for line, parts in iter_fields(path, separator, names, progress=role == "ratings"):
        yield line, dict(zip(names, parts, strict=True))


def _recbole_movie(row: dict[str, str], path: Path, line: int) -> tuple[int, str, list[str]]:
    # RecBole keeps the year apart; the text shows "Title (Year)" (no year where the field is not one).
    title, year = row["movie_title"], row["release_year"].strip()
    return (
        int_field(row["item_id"], "item_id", path, line),
        f"{title} ({year})" if title.strip() and _YEAR.fullmatch(year) else title,
        row["class"].split(),
    )


def _grouplens_movie(row: dict[str, str], path: Path, line: int) -> tuple[int, str, list[str]]:
    # GroupLens titles already end in the year: "Toy Story (1995)".
    for name in GROUPLENS_GENRES:
        if row[name] not in ("0", "1"):
            raise DataError.at(path, line, f"field '{name}' (a genre flag) must be 0 or 1, got {row[name]!r}")
    genres = [name for name in GROUPLENS_GENRES if row[name] == "1"]
    if not genres:
        first, last = GROUPLENS_GENRES[0], GROUPLENS_GENRES[-1]
        raise DataError.at(path, line, f"fields '{first}'..'{last}' (genre flags): none is 1")
    return int_field(row["movie id"], "movie id", path, line), row["movie title"], genres


LAYOUTS = {
    "recbole": (RECBOLE_FILES, RECBOLE_COLUMNS, _recbole_rows, _recbole_movie, "RecBole atomic files"),
    "grouplens": (
        GROUPLENS_FILES,
        GROUPLENS_COLUMNS,
        _grouplens_rows,
        _grouplens_movie,
        "GroupLens u.* files",
    ),
}


def _read(directory: Path, layout: str) -> RatingsTable:
    files, columns, rows, movie_of, description = LAYOUTS[layout]
    paths = {role: directory / name for role, name in files.items()}
    for role in ("movies", "ratings"):
        require_file(paths[role], f"MovieLens-100K {role}")
    movie_columns = columns["movies"]
    movies = Movies(paths["movies"], (movie_columns[0], movie_columns[1], movie_columns[3]))
    for line, row in rows(paths["movies"], "movies"):
        movies.add(line, *movie_of(row, paths["movies"], line))
    users = None
    if paths["users"].is_file():
        path = paths["users"]
        user_id, age, gender, occupation = columns["users"][:4]
        users = Users(path, user_id)
        for line, row in rows(path, "users"):
            users.add(
                line,
                int_field(row[user_id], user_id, path, line),
                gender=gender_code(row[gender], gender, path, line),
                age=int_field(row[age], age, path, line),
                occupation=row[occupation],
            )
    path = paths["ratings"]
    user_id, item_id, rating, timestamp = columns["ratings"]
    ratings = Ratings(path, (user_id, item_id, rating), movies, users)
    for line, row in rows(path, "ratings"):
        ratings.add(
            line,
            int_field(row[user_id], user_id, path, line),
            int_field(row[item_id], item_id, path, line),
            float_field(row[rating], rating, path, line),
            float_field(row[timestamp], timestamp, path, line),
        )
    return RatingsTable.collect(NAME, directory, f"movielens-100k ({description})", ratings)


def read_movielens100k(directory: str | Path, layout: str | None = None) -> RatingsTable:
    """Parse MovieLens-100K from `directory`: `layout` 'recbole' or 'grouplens' (default: detected).
    `DataError`s name file, line and field."""
    directory = Path(directory)
    return _read(directory, layout or detect_format(directory))


def load_movielens100k(
    directory: str | Path, text: str = DEFAULT_TEXT, seed: int = 0, cold_fraction: float = COLD_FRACTION
) -> RecDataset:
    """MovieLens-100K from `directory` under the item-cold protocol (`marc.data.ratings`)."""
    check_text(text)
    return item_cold_dataset(read_movielens100k(directory), text, seed, cold_fraction)
