"""The one error type for bad dataset files (and bad dataset specs)."""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """A dataset file is missing or malformed. The message names the file, the line and the field."""

    @classmethod
    def at(cls, path: str | Path, line: int | None, message: str) -> DataError:
        """`DataError` whose message starts with "<file name> line <n>: " so users find the spot."""
        where = Path(path).name if line is None else f"{Path(path).name} line {line}"
        return cls(f"{where}: {message} (file: {path})")


def require_file(path: Path, what: str) -> Path:
    """Return `path` if it is a file, else raise a `DataError` that names the expected file."""
    if not path.is_file():
        raise DataError(f"missing {what} file: expected {path}")
    return path
