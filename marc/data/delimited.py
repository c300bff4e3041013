"""Reading delimited text files line by line, with `DataError`s that name the file, line and field."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path

from tqdm import tqdm

from records.errors import DataError


def _separator_name(separator: str) -> str:
    return "tab" if separator == "\t" else repr(separator)


def iter_fields(
    path: Path,
    separator: str,
    fields: Sequence[str],
    *,
    encoding: str = "latin-1",
    progress: bool = False,
    skip_lines: int = 0,
) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) per non-blank line after the first `skip_lines` lines (e.g. a header).

    A line that does not decode, or has another number of fields than `fields`, raises `DataError`.
    """
    shown = ", ".join(fields) if separator == "\t" else separator.join(fields)
    with path.open("rb") as handle:
        lines = tqdm(
            handle, desc=path.name, unit=" lines", leave=False, disable=not progress, delay=1, mininterval=1
        )
        for line_number, raw in enumerate(lines, start=1):
            if line_number <= skip_lines:
                continue
            try:
                line = raw.decode(encoding).rstrip("\r\n")
            except UnicodeDecodeError as error:
                raise DataError.at(path, line_number, f"not valid {encoding} ({error.reason})") from None
            if not line.strip():
                continue
            parts = line.split(separator)
            if len(parts) != len(fields):
                raise DataError.at(
                    path,
                    line_number,
                    f"expected {len(fields)} {_separator_name(separator)}-separated fields ({shown}), "
                    f"got {len(parts)}",
                )
            yield line_number, parts


def int_field(value: str, field: str, path: Path, line: int) -> int:
    try:
        return int(value)
    except ValueError:
        raise DataError.at(path, line, f"field '{field}' must be an integer, got {value!r}") from None


def float_field(value: str, field: str, path: Path, line: int) -> float:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise DataError.at(path, line, f"field '{field}' must be a finite number, got {value!r}")
    return number
