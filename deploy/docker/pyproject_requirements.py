"""Print the requirements of pyproject.toml's base dependencies plus the named extras, one per line.

The Dockerfile installs these before it copies the source, so a code change never reinstalls
dependencies. An unknown extra is an error (a typo must not silently build an image without
ONNX Runtime).

    python pyproject_requirements.py pyproject.toml cpu > requirements.txt
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path


def requirements(pyproject: Path, extras: list[str]) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    optional: dict[str, list[str]] = project.get("optional-dependencies", {})
    unknown = [name for name in extras if name not in optional]
    if unknown:
        raise SystemExit(
            f"{pyproject}: unknown extra(s) {', '.join(unknown)}; [project.optional-dependencies] has "
            f"{', '.join(sorted(optional))}"
        )
    lines = list(project.get("dependencies", []))
    for name in extras:
        lines.extend(optional[name])
    return lines


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        raise SystemExit("usage: pyproject_requirements.py PYPROJECT [EXTRA ...]")
    print("\n".join(requirements(Path(argv[1]), argv[2:])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
