"""MovieLens loaders (ML-1M; ML-100K in RecBole and GroupLens layouts), the item-cold protocol, the
dataset spec options and their errors, on small files the tests write."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from marc.data import DataError, load_dataset, load_movielens, load_movielens100k
from marc.data.movielens100k import read_movielens100k
from marc_serve.cli import main as marc_main
from tests.support.movielens import (
    GENRES,
    ITEM_HEADER,
    SPEC_KIND,
    WRITERS,
    check_protocol,
    fabricate,
    split_rows,
    write_grouplens,
    write_ml1m,
    write_recbole,
)


@pytest.mark.parametrize("layout", list(WRITERS))
def test_item_cold_protocol_on_every_format(tmp_path: Path, layout: str) -> None:
    fab = fabricate()
    directory = WRITERS[layout](fab, tmp_path)
    ds = load_dataset(f"{SPEC_KIND[layout]}:{directory}", seed=3)
    check_protocol(ds, fab)
    # Seeded: the same seed gives the same split, another seed other held-out items.
    again = load_dataset(f"{SPEC_KIND[layout]}:{directory}", seed=3)
    for name in ("train", "valid", "test"):
        assert split_rows(getattr(ds, name)) == split_rows(getattr(again, name))
    other = load_dataset(f"{SPEC_KIND[layout]}:{directory}", seed=4)
    assert not np.array_equal(other.meta["held_out_items"], ds.meta["held_out_items"])
    check_protocol(other, fab)
    bigger = load_dataset(f"{SPEC_KIND[layout]}:{directory}", seed=3, cold_fraction=0.5)
    check_protocol(bigger, fab, cold_fraction=0.5)


def test_the_three_formats_give_the_same_dataset(tmp_path: Path) -> None:
    fab = fabricate()
    loaded = {
        layout: load_dataset(f"{SPEC_KIND[layout]}:{writer(fab, tmp_path / layout)}?text=title", seed=1)
        for layout, writer in WRITERS.items()
    }
    first = loaded["ml-1m"]
    assert first.item_texts[:3] == ["Film number 0 (1950)", "Film number 1 (1951)", "Café Society (1995)"]
    for layout, ds in loaded.items():
        assert ds.item_ids == first.item_ids and ds.item_texts == first.item_texts, layout
        assert ds.meta["user_ids"] == first.meta["user_ids"] == [str(u) for u, *_ in fab.users]
        assert ds.meta["user_gender"].tolist() == [int(sex == "M") for _, sex, _, _ in fab.users]
        for name in ("train", "valid", "test"):
            assert split_rows(getattr(ds, name)) == split_rows(getattr(first, name)), (layout, name)
    assert loaded["recbole"].meta["user_occupation"].tolist()[:2] == ["job0", "job1"]


@pytest.mark.parametrize("layout", list(WRITERS))
def test_item_texts_title_only_or_kar_with_genres(tmp_path: Path, layout: str) -> None:
    directory = WRITERS[layout](fabricate(), tmp_path)
    kind = SPEC_KIND[layout]
    kar = load_dataset(f"{kind}:{directory}")
    title = load_dataset(f"{kind}:{directory}?text=title")
    assert kar.item_texts[1] == "Film number 1 (1951). Genres: Comedy, Sci-Fi"
    assert title.item_texts[1] == "Film number 1 (1951)"
    assert not any(g in text for text in title.item_texts for g in GENRES)
    base = "movielens-1m" if layout == "ml-1m" else "movielens-100k"
    assert (kar.name, title.name) == (base, f"{base}-title")
    assert kar.meta["text"] == "kar" and title.meta["text"] == "title"
    # Only the text differs.
    assert split_rows(kar.test) == split_rows(title.test) and np.array_equal(kar.cold_items, title.cold_items)


def test_recbole_year_that_is_not_a_year_is_left_out_and_latin1_titles_load(tmp_path: Path) -> None:
    fab = fabricate()
    fab.movies[0] = (fab.movies[0][0], "unkonwn", "unkonwn", ["unknown"])  # as in RecBole's ml-100k.item
    fab.movies[1] = (fab.movies[1][0], "Misérables, Les", 1995, ["Drama", "Musical"])
    recbole = load_movielens100k(write_recbole(fab, tmp_path / "r"), text="kar")
    assert recbole.item_texts[:2] == [
        "unkonwn. Genres: unknown",
        "Misérables, Les (1995). Genres: Drama, Musical",
    ]
    grouplens = load_movielens100k(write_grouplens(fab, tmp_path / "g"), text="kar")
    assert grouplens.item_texts[:2] == recbole.item_texts[:2]


def test_ml1m_without_users_dat_indexes_users_by_id(tmp_path: Path) -> None:
    fab = fabricate(users=5)
    directory = write_ml1m(fab, tmp_path)
    (directory / "users.dat").unlink()
    ds = load_movielens(directory)
    assert ds.meta["user_ids"] == [str(u) for u, *_ in fab.users] and "user_gender" not in ds.meta
    check_protocol(ds, fab)


# ---------------------------------------------------------------- errors


def _broken(tmp_path: Path, layout: str, file: str, content: str) -> Path:
    directory = WRITERS[layout](fabricate(movies=6, users=2, per_user=4), tmp_path)
    (directory / file).write_bytes(content.encode("latin-1"))
    return directory


ML1M_ERRORS = [
    (
        "ratings.dat",
        "100::10::5::100\n100::10::5\n",
        "ratings.dat line 2: expected 4 '::'-separated fields (UserID::MovieID::Rating::Timestamp), got 3",
    ),
    ("ratings.dat", "100::10::five::100\n", "ratings.dat line 1: field 'Rating' must be an integer"),
    ("ratings.dat", "100::10::9::100\n", "ratings.dat line 1: field 'Rating' must be 1-5, got 9"),
    (
        "ratings.dat",
        "100::10::4::100\n100::99::4::100\n",
        "line 2: field 'MovieID': unknown movie id 99 (not in movies.dat)",
    ),
    ("ratings.dat", "100::10::4::yesterday\n", "ratings.dat line 1: field 'Timestamp' must be an integer"),
    (
        "ratings.dat",
        "33::10::4::100\n",
        "ratings.dat line 1: field 'UserID': unknown user id 33 (not in users.dat)",
    ),
    ("ratings.dat", "\n", "ratings.dat: no ratings"),
    (
        "movies.dat",
        "1::Toy Story::Comedy\n1::Heat::Action\n",
        "line 2: field 'MovieID': duplicate movie id 1",
    ),
    ("movies.dat", "1::Toy Story::Comedy\n2::::Action\n", "movies.dat line 2: field 'Title' is empty"),
    ("movies.dat", "x::Toy Story::Comedy\n", "movies.dat line 1: field 'MovieID' must be an integer"),
    ("movies.dat", "1::Toy Story::\n", "movies.dat line 1: field 'Genres' is empty"),
    ("movies.dat", "", "movies.dat: no movies"),
    ("users.dat", "100::X::1::10::48067\n", "users.dat line 1: field 'Gender' must be 'F' or 'M'"),
    ("users.dat", "100::F::1::10\n", "users.dat line 1: expected 5 '::'-separated fields"),
    (
        "users.dat",
        "100::F::1::10::1\n100::F::1::10::1\n",
        "users.dat line 2: field 'UserID': duplicate user id",
    ),
    ("users.dat", "100::F::old::10::1\n", "users.dat line 1: field 'Age' must be an integer"),
]
RECBOLE_HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
RECBOLE_ERRORS = [
    (
        "ml-100k.inter",
        "user_id\titem_id\trating\ttimestamp\n",
        "ml-100k.inter line 1: header field 'user_id' is not 'name:type'",
    ),
    (
        "ml-100k.inter",
        "user_id:token\titem_id:token\ttimestamp:float\n",
        "ml-100k.inter line 1: header lacks field 'rating'",
    ),
    (
        "ml-100k.inter",
        RECBOLE_HEADER + "100\t10\t4\n",
        "ml-100k.inter line 2: expected 4 tab-separated fields (user_id, item_id, rating, timestamp), got 3",
    ),
    (
        "ml-100k.inter",
        RECBOLE_HEADER + "100\t10\t4\t1\n100\t10\tgood\t2\n",
        "ml-100k.inter line 3: field 'rating' must be a finite number, got 'good'",
    ),
    (
        "ml-100k.inter",
        RECBOLE_HEADER + "100\t10\t0.5\t1\n",
        "ml-100k.inter line 2: field 'rating' must be 1-5",
    ),
    (
        "ml-100k.inter",
        RECBOLE_HEADER + "100\t10\t4\tnan\n",
        "line 2: field 'timestamp' must be a finite number",
    ),
    (
        "ml-100k.inter",
        RECBOLE_HEADER + "100\t77\t4\t1\n",
        "ml-100k.inter line 2: field 'item_id': unknown movie id 77 (not in ml-100k.item)",
    ),
    (
        "ml-100k.inter",
        RECBOLE_HEADER + "555\t10\t4\t1\n",
        "ml-100k.inter line 2: field 'user_id': unknown user id 555 (not in ml-100k.user)",
    ),
    ("ml-100k.inter", RECBOLE_HEADER + "1e2\t10\t4\t1\n", "line 2: field 'user_id' must be an integer"),
    (
        "ml-100k.item",
        ITEM_HEADER + "10\tA\t1995\tDrama\n10\tB\t1995\tDrama\n",
        "ml-100k.item line 3: field 'item_id': duplicate movie id 10",
    ),
    (
        "ml-100k.item",
        ITEM_HEADER + "10\t \t1995\tDrama\n",
        "ml-100k.item line 2: field 'movie_title' is empty",
    ),
    ("ml-100k.item", ITEM_HEADER + "10\tA\t1995\t\n", "ml-100k.item line 2: field 'class' is empty"),
    (
        "ml-100k.user",
        "user_id:token\tage:token\tgender:token\toccupation:token\n100\t20\tX\tother\n",
        "ml-100k.user line 2: field 'gender' must be 'F' or 'M', got 'X'",
    ),
]
FLAGS = "|".join(["0"] * 18)
GROUPLENS_ERRORS = [
    (
        "u.data",
        "100\t10\t4\t1\n100 10 4 2\n",
        "u.data line 2: expected 4 tab-separated fields (user id, item id, rating, timestamp), got 1",
    ),
    ("u.data", "100\t10\t6\t1\n", "u.data line 1: field 'rating' must be 1-5, got 6"),
    (
        "u.data",
        "100\t12345\t4\t1\n",
        "u.data line 1: field 'item id': unknown movie id 12345 (not in u.item)",
    ),
    (
        "u.item",
        f"10|A (1995)|01-Jan-1995||url|1|{FLAGS}\n11|B|x||url|{FLAGS}\n",
        "u.item line 2: expected 24 "
        "'|'-separated fields (movie id|movie title|release date|video release date|IMDb URL|unknown|Action",
    ),
    (
        "u.item",
        f"10|A (1995)|01-Jan-1995||url|2|{FLAGS}\n",
        "u.item line 1: field 'unknown' (a genre flag) must be 0 or 1, got '2'",
    ),
    (
        "u.item",
        f"10|A (1995)|01-Jan-1995||url|0|{FLAGS}\n",
        "u.item line 1: fields 'unknown'..'Western' (genre flags): none is 1",
    ),
    (
        "u.item",
        f"ten|A (1995)|01-Jan-1995||url|1|{FLAGS}\n",
        "u.item line 1: field 'movie id' must be an integer",
    ),
    ("u.user", "100|20|M|other\n", "u.user line 1: expected 5 '|'-separated fields"),
    ("u.user", "100|old|M|other|1\n", "u.user line 1: field 'age' must be an integer, got 'old'"),
]


@pytest.mark.parametrize(
    ("layout", "file", "content", "expected"),
    [("ml-1m", *case) for case in ML1M_ERRORS]
    + [("recbole", *case) for case in RECBOLE_ERRORS]
    + [("grouplens", *case) for case in GROUPLENS_ERRORS],
)
def test_malformed_files_raise_data_error_naming_file_line_and_field(
    tmp_path: Path, layout: str, file: str, content: str, expected: str
) -> None:
    directory = _broken(tmp_path, layout, file, content)
    with pytest.raises(DataError) as error:
        load_dataset(f"{SPEC_KIND[layout]}:{directory}")
    assert expected in str(error.value)
    assert str(directory / file) in str(error.value)


def test_recbole_file_that_is_not_utf8_names_the_line(tmp_path: Path) -> None:
    directory = write_recbole(fabricate(movies=6, users=2, per_user=4), tmp_path)
    (directory / "ml-100k.item").write_bytes(ITEM_HEADER.encode() + b"10\tCaf\xe9\t1995\tDrama\n")
    with pytest.raises(DataError, match=r"ml-100k\.item line 2: not valid utf-8"):
        load_movielens100k(directory)


@pytest.mark.parametrize(
    ("spec", "error", "expected"),
    [
        ("movielens100k:{dir}?text=genre", DataError, "unknown item text 'genre': expected one of 'kar'"),
        ("movielens100k:{dir}?colour=red", DataError, "unknown option 'colour' (options: text=kar|title)"),
        ("movielens100k:{dir}?text", DataError, "option 'text' is not key=value"),
        ("synthetic?text=title", DataError, "'synthetic' takes no ?options"),
        ("movielens100k:{dir}/nowhere", DataError, "MovieLens-100K directory not found"),
        ("movielens100k:{empty}", DataError, "no MovieLens-100K files in"),
        ("movielens:{empty}", DataError, "missing MovieLens movies file"),
        ("movielens100k", DataError, "unknown dataset spec 'movielens100k'"),
    ],
)
def test_bad_specs_say_what_is_wrong(tmp_path: Path, spec: str, error: type, expected: str) -> None:
    directory = write_recbole(fabricate(movies=6, users=2, per_user=4), tmp_path / "ml")
    (tmp_path / "empty").mkdir()
    with pytest.raises(error) as raised:
        load_dataset(spec.format(dir=directory, empty=tmp_path / "empty"))
    assert expected in str(raised.value)


def test_rating_specs_take_only_cold_fraction(tmp_path: Path) -> None:
    directory = write_grouplens(fabricate(), tmp_path)
    with pytest.raises(ValueError, match="takes only the size option cold_fraction"):
        load_dataset(f"movielens100k:{directory}", num_items=10)
    with pytest.raises(ValueError, match="cold_fraction must be in"):
        load_dataset(f"movielens100k:{directory}", cold_fraction=1.0)


def test_read_detects_the_layout_and_prefers_recbole_when_both_are_there(tmp_path: Path) -> None:
    fab = fabricate()
    write_grouplens(fab, tmp_path)
    assert "GroupLens" in read_movielens100k(tmp_path).file_format
    write_recbole(fab, tmp_path)
    assert "RecBole" in read_movielens100k(tmp_path).file_format
    assert "GroupLens" in read_movielens100k(tmp_path, "grouplens").file_format


def test_cli_show_summarises_a_movielens100k_spec(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = write_recbole(fabricate(), tmp_path)
    assert marc_main(["data", "show", f"movielens100k:{directory}?text=title", "--seed", "2"]) == 0
    out = capsys.readouterr().out
    assert "dataset: movielens-100k-title" in out and "users: 40  items: 60" in out
    assert "Film number 0 (1950)" in out
    assert marc_main(["data", "show", f"movielens100k:{directory}?text=plot"]) == 2
    assert "unknown item text 'plot'" in capsys.readouterr().err
