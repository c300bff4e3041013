"""The settings reference of docs/settings.md, generated from `service.settings.Settings`: one row per
field (its `MARC_*` variable, default and description). `python -m service.settings_doc` (or
`make settings-doc`) rewrites the table between the markers; tests/service/test_settings_doc.py fails
when the document and the class disagree."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from service.settings import Settings

BEGIN = "<!-- BEGIN GENERATED: python -m service.settings_doc -->"
END = "<!-- END GENERATED: python -m service.settings_doc -->"
DOC = Path("docs/settings.md")


def env_var(field_name: str) -> str:
    return f"{Settings.model_config['env_prefix']}{field_name.upper()}"


def shown_default(value: object) -> str:
    """A default as it is written in the environment."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if value == "":
        return "empty"
    return f"`{value}`"


def settings_table() -> str:
    """The markdown table of every setting, in the class's order."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        if not field.description:
            raise ValueError(f"Settings.{name} has no description: every setting is documented")
        meaning = field.description.replace("|", "\\|")
        rows.append(f"| `{env_var(name)}` | {shown_default(field.default)} | {meaning} |")
    return "\n".join(rows) + "\n"


def with_table(document: str) -> str:
    """``document`` with the generated table between its markers replaced by the current one."""
    if BEGIN not in document or END not in document:
        raise ValueError(f"no generated settings table: the markers {BEGIN} and {END} are missing")
    start, end = document.index(BEGIN) + len(BEGIN), document.index(END)
    return f"{document[:start]}\n{settings_table()}{document[end:]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("doc", nargs="?", type=Path, default=DOC, help=f"the document to update ({DOC})")
    path = parser.parse_args(argv).doc
    document = path.read_text()
    try:
        updated = with_table(document)
    except ValueError as error:
        print(f"{path}: {error}", file=sys.stderr)
        return 1
    if updated == document:
        print(f"{path}: the settings table is up to date")
    else:
        path.write_text(updated)
        print(f"{path}: settings table regenerated from service.settings.Settings")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
