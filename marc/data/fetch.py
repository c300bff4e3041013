"""`marc data get ml-100k`: put MovieLens-100K on disk (never in the repository: it may not be
redistributed) and check it.

Two sources: the PyPI wheel `recbole==1.2.1`, which ships the RecBole atomic files under
`recbole/dataset_example/ml-100k/` (fetched with `pip download --no-deps` into a cache: recbole is
not installed, nor any of its dependencies), or a GroupLens `ml-100k.zip` the user already has.
Only the rating, item and user files are extracted; the RecBole files are checked against their
SHA-256, both layouts against the published counts.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from marc.data.movielens100k import GROUPLENS_FILES, RECBOLE_FILES, detect_format, read_movielens100k
from marc.data.ratings import RatingsTable
from records.errors import DataError

RECBOLE_REQUIREMENT = "recbole==1.2.1"
RECBOLE_WHEEL = "recbole-1.2.1-py3-none-any.whl"
WHEEL_FOLDER = "recbole/dataset_example/ml-100k/"
RECBOLE_SHA256 = {
    "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
    "ml-100k.user": "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
}
ML100K_COUNTS = {"users": 943, "items": 1682, "ratings": 100_000}
DEFAULT_OUT = Path("data/ml-100k")
DEFAULT_CACHE = Path(".cache/downloads")

Say = Callable[[str], None]


@dataclass(frozen=True)
class Fetched:
    directory: Path
    layout: str
    """'recbole' or 'grouplens' (see `marc.data.movielens100k`)."""
    files: list[str]
    counts: dict[str, int]
    reused: bool
    """True when the directory already held checked files and nothing was downloaded or extracted."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _counts(table: RatingsTable) -> dict[str, int]:
    return {
        "users": len(set(table.users.tolist())),
        "items": len(table.movies.ids),
        "ratings": len(table.ratings),
    }


def check_ml100k(directory: Path, layout: str | None = None) -> tuple[str, dict[str, int]]:
    """(layout, counts) of the MovieLens-100K files in `directory` (`layout` default: detected), or
    `DataError` if they are not the published ones (SHA-256 of the RecBole files, counts of both)."""
    layout = layout or detect_format(directory)
    if layout == "recbole":
        for name, expected in RECBOLE_SHA256.items():
            digest = _sha256(directory / name) if (directory / name).is_file() else "missing"
            if digest != expected:
                raise DataError(
                    f"{directory / name} is not the file of {RECBOLE_REQUIREMENT}: SHA-256 {digest}, "
                    f"expected {expected}"
                )
    counts = _counts(read_movielens100k(directory, layout))
    wrong = [
        f"{counts[key]:,} {key} (expected {value:,})"
        for key, value in ML100K_COUNTS.items()
        if counts[key] != value
    ]
    if wrong:
        raise DataError(f"{directory} does not hold MovieLens-100K: found {', '.join(wrong)}")
    return layout, counts


def _write(out: Path, name: str, data: bytes) -> Path:
    """Write atomically, so an interrupted run never leaves a half file under the real name."""
    target = out / name
    partial = out / f".{name}.partial"
    partial.write_bytes(data)
    os.replace(partial, target)
    return target


def download_recbole_wheel(cache_dir: Path, say: Say = print) -> Path:
    """The recbole wheel in `cache_dir`, downloaded with `pip download --no-deps` unless already there."""
    wheel = cache_dir / RECBOLE_WHEEL
    if wheel.is_file():
        say(f"using the cached {wheel}")
        return wheel
    if importlib.util.find_spec("pip") is None:
        raise DataError(
            f"pip is not installed in this Python ({sys.executable}): install it, or put {RECBOLE_WHEEL} "
            f"(from PyPI) into {cache_dir}, or use --from-zip with GroupLens' ml-100k.zip"
        )
    cache_dir.mkdir(parents=True, exist_ok=True)
    say(f"downloading {RECBOLE_REQUIREMENT} from PyPI (a 2.1 MB wheel that ships MovieLens-100K; not "
        f"installed, no dependencies) into {cache_dir} ...")  # fmt: skip
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--progress-bar",
               "on", "--dest", str(cache_dir), RECBOLE_REQUIREMENT]  # fmt: skip
    code = subprocess.run(command, check=False).returncode
    if code != 0 or not wheel.is_file():
        raise DataError(
            f"could not download {RECBOLE_REQUIREMENT} with pip (exit code {code}; pip's message is above). "
            f"No network? Put {RECBOLE_WHEEL} into {cache_dir} by other means, or use --from-zip PATH "
            "with GroupLens' ml-100k.zip"
        )
    return wheel


def _open_zip(path: Path, what: str) -> zipfile.ZipFile:
    if not path.is_file():
        raise DataError(f"{what} not found: {path}")
    try:
        return zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise DataError(f"{path} is not a zip file (expected {what})") from None


def extract_from_wheel(wheel: Path, out: Path, say: Say = print) -> list[Path]:
    """Extract the three RecBole MovieLens-100K files of the wheel into `out`."""
    with _open_zip(wheel, f"the {RECBOLE_REQUIREMENT} wheel; delete it and run again") as archive:
        members = set(archive.namelist())
        names = [WHEEL_FOLDER + name for name in RECBOLE_FILES.values()]
        missing = [name for name in names if name not in members]
        if missing:
            raise DataError(
                f"{wheel} has no {missing[0]}: not the {RECBOLE_REQUIREMENT} wheel (delete it and retry)"
            )
        say(f"extracting {WHEEL_FOLDER}{{{','.join(RECBOLE_FILES.values())}}} to {out}")
        return [_write(out, name.rsplit("/", 1)[1], archive.read(name)) for name in names]


def extract_from_zip(path: Path, out: Path, say: Say = print) -> list[Path]:
    """Extract u.data, u.item and u.user of GroupLens' ml-100k.zip into `out`."""
    with _open_zip(path, "GroupLens' ml-100k.zip") as archive:
        by_name: dict[str, list[str]] = {}
        for member in archive.namelist():
            by_name.setdefault(member.rsplit("/", 1)[-1], []).append(member)
        if "ratings.dat" in by_name and "u.data" not in by_name:
            raise DataError(
                f"{path} looks like MovieLens-1M (it has ratings.dat), not MovieLens-100K: unzip it and use "
                "the dataset spec movielens:<dir>"
            )
        chosen = []
        for name in GROUPLENS_FILES.values():
            found = by_name.get(name, [])
            if len(found) != 1:
                raise DataError(
                    f"{path} has {'no' if not found else 'several'} {name} "
                    f"({', '.join(found) or 'expected ml-100k/' + name}): not GroupLens' ml-100k.zip"
                )
            chosen.append(found[0])
        say(f"extracting {', '.join(chosen)} from {path} to {out}")
        return [_write(out, member.rsplit("/", 1)[-1], archive.read(member)) for member in chosen]


def fetch_ml100k(
    out: Path = DEFAULT_OUT,
    *,
    from_zip: Path | None = None,
    cache_dir: Path = DEFAULT_CACHE,
    say: Say = print,
) -> Fetched:
    """MovieLens-100K in `out`, checked: reused if already there, else from `from_zip` or the wheel."""
    out = Path(out)
    if from_zip is None and out.is_dir():
        try:
            layout, counts = check_ml100k(out)
        except DataError:
            pass  # not there (or not right): fetch it again below
        else:
            files = RECBOLE_FILES if layout == "recbole" else GROUPLENS_FILES
            return Fetched(out, layout, [str(out / name) for name in files.values()], counts, reused=True)
    out.mkdir(parents=True, exist_ok=True)
    if from_zip is not None:
        written = extract_from_zip(Path(from_zip), out, say)
    else:
        written = extract_from_wheel(download_recbole_wheel(Path(cache_dir), say), out, say)
    say("checking the files ...")
    layout, counts = check_ml100k(out, "grouplens" if from_zip is not None else "recbole")
    return Fetched(out, layout, [str(path) for path in written], counts, reused=False)
