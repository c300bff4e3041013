"""The repository's prose points only at what the repository holds: every file path, markdown link
(and its ``#anchor``: a heading of the linked document), test (``file.py::test_name``) and dotted
module name that a document, comment or docstring names exists; no text cites an outside design
document; and docs/ARCHITECTURE.md names every package, route and metric the code has."""

from __future__ import annotations

import ast
import io
import re
import subprocess
import tokenize
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.metrics import Metrics

REPO = Path(__file__).resolve().parents[1]
ARCHITECTURE = REPO / "docs" / "ARCHITECTURE.md"
PACKAGES = ("artifact", "records", "marc", "marc_serve", "service", "export", "loadtest")
TOP_FOLDERS = (*PACKAGES, "tests", "deploy", "docs", "reports")

# A repository path: a known top folder, then a file with an extension (or a folder ending in "/"),
# optionally a test in it. Paths without an extension are often outputs a command will write.
PATH = re.compile(
    r"(?<![\w./-])((?:" + "|".join(TOP_FOLDERS) + r")/(?:[\w*.-]+/)*(?:[\w*-]+\.[a-z]{2,5}\b|))(?:::(\w+))?"
)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
BACKTICKED = re.compile(r"`+([^`\n]+)`+")
DOTTED = re.compile(r"^(?:" + "|".join(PACKAGES) + r")(?:\.[A-Za-z_]\w*)+")
# The design notes the project started from are not in the repository, so nothing may cite them.
OUTSIDE_DOCUMENT = re.compile("DES" + r"IGN(?:\.md\b|\s*§)")
HEADING = re.compile(r"^#{1,6} +(.+?) *#*$")


def heading_anchors(markdown: str) -> set[str]:
    """The ``#anchor`` of every heading outside code fences, as GitHub makes them: lower case, markup
    and punctuation dropped, spaces to hyphens, ``-1``, ``-2`` ... for repeats."""
    anchors: set[str] = set()
    in_fence = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_fence = not in_fence
        elif not in_fence and (heading := HEADING.match(line)):
            slug = re.sub(r"[^\w\- ]", "", heading.group(1).lower()).replace(" ", "-")
            anchor, repeat = slug, 0
            while anchor in anchors:
                repeat += 1
                anchor = f"{slug}-{repeat}"
            anchors.add(anchor)
    return anchors


def _tracked_text_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True)
    files = []
    for name in listed.stdout.splitlines():
        path = REPO / name
        if path.is_file() and b"\0" not in path.read_bytes()[:8192]:
            files.append(path)
    return files


FILES = _tracked_text_files()


def _python_prose(source: str) -> str:
    """The comments and the bare string literals (docstrings) of a Python file."""
    parts = [
        node.value.value
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
        if isinstance(node.value.value, str)
    ]
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    parts += [token.string for token in tokens if token.type == tokenize.COMMENT]
    return "\n".join(parts)


def _prose(path: Path) -> str:
    text = path.read_text(errors="replace")
    return _python_prose(text) if path.suffix == ".py" else text


def _defines(module: Path, name: str) -> bool:
    """``name`` is bound at the top level of ``module`` (def, class, assignment or import)."""
    for node in ast.parse(module.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            return True
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                return True
        if isinstance(node, (ast.Import, ast.ImportFrom)) and any(
            (alias.asname or alias.name.split(".")[0]) == name for alias in node.names
        ):
            return True
    return False


def dotted_name_exists(dotted: str) -> bool:
    """``package.module.name`` resolves: each module part is a file or package, and the first part
    after the modules is defined at the top of the last one (what follows it is not checked)."""
    parts = dotted.split(".")
    folder, module = REPO, None
    for index, part in enumerate(parts):
        if folder is not None and (folder / part / "__init__.py").is_file():
            folder, module = folder / part, folder / part / "__init__.py"
        elif folder is not None and (folder / f"{part}.py").is_file():
            folder, module = None, folder / f"{part}.py"
        else:
            return module is not None and index > 0 and _defines(module, part)
    return True


def _anchors_of(document: Path) -> set[str]:
    return heading_anchors(document.read_text()) if document.suffix == ".md" else set()


def missing_references(text: str, where: Path) -> Iterator[str]:
    """Every path, link, test or dotted name in ``text`` (found in ``where``) that does not exist."""
    for match in PATH.finditer(text):
        path, test = match.group(1), match.group(2)
        found = list(REPO.glob(path.rstrip("/"))) if "*" in path else [REPO / path]
        if not all(each.exists() for each in found) or not found:
            yield path
        elif test and not any(f"def {test}(" in each.read_text() for each in found):
            yield f"{path}::{test}"
    if where.suffix == ".md":
        for target in LINK.findall(text):
            if re.match(r"[a-z]+:", target):
                continue  # a URL
            file, _, anchor = target.partition("#")
            linked = where.parent / file if file else where
            if not linked.exists() or (anchor and anchor not in _anchors_of(linked)):
                yield target
    for span in BACKTICKED.findall(text):
        dotted = DOTTED.match(span.strip())
        if dotted and not dotted_name_exists(dotted.group(0)):
            yield dotted.group(0)


def test_the_reference_checks_find_what_is_missing() -> None:
    text = (
        "See [the notes](docs/NOWHERE.md), [no such part](docs/api.md#no-such-heading), "
        "[a part](docs/api.md#wire-encodings), [not a heading](#the-reference-checks), "
        "`marc/nothing.py`, tests/marc/test_data.py::test_nope, "
        "`marc.train.loop.no_such_function`, `service.gone` and tests/marc/test_data.py; "
        "`marc.train.loop.train_marc` and `artifact.manifest.Manifest.model_validate` exist."
    )
    missing = set(missing_references(text, REPO / "README.md"))
    assert missing == {
        "docs/NOWHERE.md",
        "docs/api.md#no-such-heading",
        "#the-reference-checks",
        "marc/nothing.py",
        "tests/marc/test_data.py::test_nope",
        "marc.train.loop.no_such_function",
        "service.gone",
    }
    assert OUTSIDE_DOCUMENT.search("as " + "DES" + "IGN §4 says") is not None


def test_heading_anchors_are_githubs() -> None:
    markdown = (
        "# Cache housekeeping: `marc cache stats` and `marc cache purge`\n"
        "## Image check: the Dockerfile built and run ##\n"
        "```bash\n# a comment, not a heading\n```\n"
        "### Notes\n### Notes\n"
    )
    assert heading_anchors(markdown) == {
        "cache-housekeeping-marc-cache-stats-and-marc-cache-purge",
        "image-check-the-dockerfile-built-and-run",
        "notes",
        "notes-1",
    }


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_reference_exists(path: Path) -> None:
    prose = _prose(path)
    assert not OUTSIDE_DOCUMENT.search(prose), f"{path} cites a document the repository does not hold"
    assert list(missing_references(prose, path)) == []


def _architecture_section(title: str) -> str:
    text = ARCHITECTURE.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def test_architecture_places_every_package() -> None:
    layers = _architecture_section("Layers: what may import what")
    assert all(f"`{package}/`" in layers for package in PACKAGES)


def test_architecture_lists_every_metric() -> None:
    documented = set(re.findall(r"`(marc_[a-z_]+)", _architecture_section("Metrics")))
    registered = {name for family in Metrics().registry.collect() for name in [family.name]}
    # prometheus_client reports counters without their _total suffix
    registered = {f"{name}_total" if f"{name}_total" in documented else name for name in registered}
    assert documented == registered


def test_architecture_lists_every_route_with_its_code_and_test(tmp_path: Path) -> None:
    from fastapi.routing import APIRoute

    from service.app import create_app
    from service.settings import Settings

    api = _architecture_section("API")
    app = create_app(Settings(artifact=tmp_path))  # routes only: nothing loads before the lifespan
    for route in app.routes:
        if isinstance(route, APIRoute):
            for method in route.methods:
                row = re.search(rf"^\| `{method} {re.escape(route.path)}` \|.*$", api, flags=re.M)
                assert row, f"{method} {route.path} is not in the API table"
                assert re.search(r"`service/[\w/]+\.py`", row.group(0)), f"{route.path}: no code file"
                assert re.search(r"tests/[\w/]+\.py::test_\w+", row.group(0)), f"{route.path}: no test"
