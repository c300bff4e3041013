"""`marc data get ml-100k`: the real download from PyPI (as a user runs it), the GroupLens zip path,
and every way the files can be wrong or missing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from marc.data import DataError, load_dataset
from marc.data.fetch import (
    RECBOLE_WHEEL,
    WHEEL_FOLDER,
    check_ml100k,
    fetch_ml100k,
)
from marc.data.movielens100k import read_movielens100k
from marc_serve.cli import main as marc_main
from tests.support.movielens import (
    Ratings,
    check_protocol,
    fabricate,
    grouplens_item_line,
    split_rows,
    write_grouplens,
    write_recbole,
)


def _marc(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The `marc` command in a new process, as a user runs it."""
    command = [sys.executable, "-m", "marc_serve", *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600, check=False)


@pytest.fixture(scope="module")
def fetched(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """(out, cache, stdout) of docs/training.md's `marc data get ml-100k` (default paths, from PyPI)."""
    root = tmp_path_factory.mktemp("ml100k")
    result = _marc("data", "get", "ml-100k", cwd=root)
    assert result.returncode == 0, result.stderr
    return root / "data" / "ml-100k", root / ".cache" / "downloads", result.stdout


@pytest.mark.slow
def test_get_ml100k_from_pypi_has_the_published_counts(fetched: tuple[Path, Path, str]) -> None:
    out, cache, stdout = fetched
    assert "downloading recbole==1.2.1 from PyPI" in stdout and "extracting" in stdout
    assert f"943 users, 1,682 items, 100,000 ratings; checked) in {out.resolve()}" in stdout
    assert "movielens100k:data/ml-100k?text=title" in stdout
    # Only the three data files, nothing else of the wheel; the wheel itself stays in the cache.
    assert sorted(p.name for p in out.iterdir()) == ["ml-100k.inter", "ml-100k.item", "ml-100k.user"]
    assert (cache / RECBOLE_WHEEL).is_file()
    table = read_movielens100k(out)
    assert len(np.unique(table.users)) == 943 == len(table.user_ids)
    assert len(table.movies.ids) == 1682 and len(table.ratings) == 100_000
    assert table.movies.titles[0] == "Toy Story (1995)"
    assert table.movies.genres[0] == ["Animation", "Children's", "Comedy"]
    assert sorted(np.unique(table.ratings).tolist()) == [1.0, 2.0, 3.0, 4.0, 5.0]
    # The next command of docs/training.md.
    shown = _marc("data", "show", "movielens100k:data/ml-100k?text=title", cwd=out.parent.parent)
    assert shown.returncode == 0, shown.stderr
    assert "dataset: movielens-100k-title" in shown.stdout and "users: 943  items: 1682" in shown.stdout


@pytest.mark.slow
def test_second_get_reuses_the_checked_files(fetched: tuple[Path, Path, str], capsys) -> None:
    out, cache, _ = fetched
    assert marc_main(["data", "get", "ml-100k", "--out", str(out), "--cache-dir", str(cache)]) == 0
    printed = capsys.readouterr().out
    assert "already there, checked" in printed and "downloading" not in printed


@pytest.mark.slow
@pytest.mark.parametrize("text", ["title", "kar"])
def test_item_cold_protocol_on_the_real_ml100k(fetched: tuple[Path, Path, str], text: str) -> None:
    out, _, _ = fetched
    ds = load_dataset(f"movielens100k:{out}?text={text}")
    table = read_movielens100k(out)
    ratings = Ratings(
        movies=[],
        users=[],
        ratings=list(
            zip(
                np.asarray(table.user_ids)[table.users].tolist(),
                np.asarray(table.movies.ids)[table.items].tolist(),
                table.ratings.tolist(),
                table.timestamps.tolist(),
                strict=True,
            )
        ),
    )
    check_protocol(ds, ratings)
    assert ds.meta["held_out_items"].sum() == 336  # round(0.2 * 1682): all items are rated
    assert (ds.item_texts[0], ds.name) == (
        ("Toy Story (1995)", "movielens-100k-title")
        if text == "title"
        else ("Toy Story (1995). Genres: Animation, Children's, Comedy", "movielens-100k")
    )


def _grouplens_zip_from_recbole(recbole: Path, path: Path) -> Path:
    """GroupLens' layout (ml-100k/u.data, u.item, u.user; latin-1, no header) of the RecBole files."""
    items = [line.split("\t") for line in (recbole / "ml-100k.item").read_text("utf-8").splitlines()[1:]]
    users = [line.split("\t") for line in (recbole / "ml-100k.user").read_text("utf-8").splitlines()[1:]]
    inter = (recbole / "ml-100k.inter").read_text("utf-8").splitlines()[1:]
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("ml-100k/README", "MovieLens 100K (test copy)\n")
        archive.writestr(
            "ml-100k/u.item",
            "".join(grouplens_item_line(int(m), t, y, g.split()) for m, t, y, g in items).encode("latin-1"),
        )
        archive.writestr("ml-100k/u.user", "".join("|".join(u) + "\n" for u in users).encode("latin-1"))
        archive.writestr("ml-100k/u.data", "\n".join(inter) + "\n")
    return path


@pytest.mark.slow
def test_get_from_grouplens_zip_gives_the_same_dataset(
    fetched: tuple[Path, Path, str], tmp_path: Path, capsys
) -> None:
    out, _, _ = fetched
    archive = _grouplens_zip_from_recbole(out, tmp_path / "ml-100k.zip")
    target = tmp_path / "grouplens"
    assert marc_main(["data", "get", "ml-100k", "--from-zip", str(archive), "--out", str(target)]) == 0
    assert "grouplens files, 943 users, 1,682 items, 100,000 ratings" in capsys.readouterr().out
    assert sorted(p.name for p in target.iterdir()) == ["u.data", "u.item", "u.user"]
    for text in ("title", "kar"):
        recbole = load_dataset(f"movielens100k:{out}?text={text}", seed=2)
        grouplens = load_dataset(f"movielens100k:{target}?text={text}", seed=2)
        assert grouplens.meta["format"] != recbole.meta["format"]
        assert grouplens.item_texts == recbole.item_texts and grouplens.item_ids == recbole.item_ids
        for name in ("train", "valid", "test"):
            assert split_rows(getattr(grouplens, name)) == split_rows(getattr(recbole, name))


@pytest.mark.slow
def test_a_changed_file_is_detected_and_fetched_again_from_the_cache(
    fetched: tuple[Path, Path, str], tmp_path: Path
) -> None:
    out, cache, _ = fetched
    copy = shutil.copytree(out, tmp_path / "copy")
    item = copy / "ml-100k.item"
    item.write_text(item.read_text("utf-8").replace("Toy Story", "Toy Stories"), "utf-8")
    with pytest.raises(DataError, match=r"ml-100k\.item is not the file of recbole==1\.2\.1: SHA-256"):
        check_ml100k(copy)
    result = fetch_ml100k(copy, cache_dir=cache, say=lambda _: None)  # the cached wheel: no network
    assert not result.reused and check_ml100k(copy)[1]["ratings"] == 100_000
    assert "1\tToy Story\t1995" in item.read_text("utf-8")


# ---------------------------------------------------------------- errors (no network needed)


def _get(capsys, *args: str) -> tuple[int, str]:
    code = marc_main(["data", "get", "ml-100k", *args])
    return code, capsys.readouterr().err


def test_no_network_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    # pip sees only an index nobody listens on, no config file and no local wheels.
    for name, value in {
        "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
        "PIP_EXTRA_INDEX_URL": "",
        "PIP_FIND_LINKS": "",
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_RETRIES": "0",
        "PIP_TIMEOUT": "3",
    }.items():
        monkeypatch.setenv(name, value)
    code, err = _get(capsys, "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"))
    assert code == 2
    assert "could not download recbole==1.2.1 with pip (exit code 1" in err
    assert "No network?" in err and "--from-zip" in err
    assert not (tmp_path / "out" / "ml-100k.inter").exists()


def test_cached_wheel_that_is_not_a_zip(tmp_path: Path, capsys) -> None:
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / RECBOLE_WHEEL).write_bytes(b"<html>proxy error</html>")
    code, err = _get(capsys, "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"))
    assert code == 2 and f"{RECBOLE_WHEEL} is not a zip file" in err and "delete it and run again" in err


def test_cached_wheel_without_the_dataset(tmp_path: Path, capsys) -> None:
    (tmp_path / "cache").mkdir()
    with zipfile.ZipFile(tmp_path / "cache" / RECBOLE_WHEEL, "w") as wheel:
        wheel.writestr("recbole/__init__.py", "")
    code, err = _get(capsys, "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"))
    assert code == 2 and f"has no {WHEEL_FOLDER}ml-100k.inter: not the recbole==1.2.1 wheel" in err


def test_cached_wheel_with_other_files_fails_the_checksum(tmp_path: Path, capsys) -> None:
    small = write_recbole(fabricate(), tmp_path / "small")
    (tmp_path / "cache").mkdir()
    with zipfile.ZipFile(tmp_path / "cache" / RECBOLE_WHEEL, "w") as wheel:
        for name in ("ml-100k.inter", "ml-100k.item", "ml-100k.user"):
            wheel.write(small / name, WHEEL_FOLDER + name)
    code, err = _get(capsys, "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"))
    assert code == 2 and "ml-100k.inter is not the file of recbole==1.2.1: SHA-256" in err


def test_from_zip_errors(tmp_path: Path, capsys) -> None:
    out = str(tmp_path / "out")
    code, err = _get(capsys, "--from-zip", str(tmp_path / "nothing.zip"), "--out", out)
    assert code == 2 and "GroupLens' ml-100k.zip not found" in err

    (tmp_path / "page.zip").write_text("not a zip")
    code, err = _get(capsys, "--from-zip", str(tmp_path / "page.zip"), "--out", out)
    assert code == 2 and "page.zip is not a zip file (expected GroupLens' ml-100k.zip)" in err

    with zipfile.ZipFile(tmp_path / "ml-1m.zip", "w") as archive:
        archive.writestr("ml-1m/ratings.dat", "1::1::5::1\n")
    code, err = _get(capsys, "--from-zip", str(tmp_path / "ml-1m.zip"), "--out", out)
    assert code == 2 and "looks like MovieLens-1M" in err and "movielens:<dir>" in err

    small = write_grouplens(fabricate(), tmp_path / "small")
    with zipfile.ZipFile(tmp_path / "partial.zip", "w") as archive:
        for name in ("u.data", "u.item"):
            archive.write(small / name, f"ml-100k/{name}")
    code, err = _get(capsys, "--from-zip", str(tmp_path / "partial.zip"), "--out", out)
    assert code == 2 and "has no u.user (expected ml-100k/u.user): not GroupLens' ml-100k.zip" in err

    with zipfile.ZipFile(tmp_path / "small.zip", "w") as archive:
        for name in ("u.data", "u.item", "u.user"):
            archive.write(small / name, f"ml-100k/{name}")
    code, err = _get(capsys, "--from-zip", str(tmp_path / "small.zip"), "--out", out)
    assert code == 2 and "does not hold MovieLens-100K: found 40 users (expected 943)" in err
    assert "60 items (expected 1,682), 1,000 ratings (expected 100,000)" in err
