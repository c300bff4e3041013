"""The layers of docs/ARCHITECTURE.md ("Layers: what may import what"), read from the source with `ast`:
every import of a project package - at the top of a file or inside a function - goes down the layers,
no modules import each other around a circle, the serving side never imports the training stack, and
every package is installed and shipped."""

from __future__ import annotations

import ast
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# package -> the packages it may import. Lower layers first; nothing imports upwards.
LAYERS: dict[str, set[str]] = {
    "artifact": set(),
    "records": set(),
    "marc": {"records"},
    "service": {"artifact", "records"},
    "export": {"artifact", "records", "marc"},
    "loadtest": {"artifact", "records", "marc", "export", "service"},
    "marc_serve": {"marc", "export", "service", "loadtest"},
}
# The train extra's modules: the serving install (`.[cpu]`, the Docker images) has none of them.
TRAINING_STACK = {"torch", "transformers", "peft", "accelerate", "gguf", "safetensors", "sklearn", "onnx"}
SERVING_SIDE = ("artifact", "records", "service")


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, imported module or module.name) for every absolute import anywhere in the file."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: relative import (write the absolute one)"
            assert node.module is not None
            yield node.lineno, node.module
            yield from ((node.lineno, f"{node.module}.{alias.name}") for alias in node.names)


SOURCES = {_module_name(path): path for package in LAYERS for path in (REPO / package).rglob("*.py")}
IMPORTS = {module: list(_imports(path)) for module, path in SOURCES.items()}


def test_every_top_level_package_has_a_layer() -> None:
    # tests/ is a package only so that its helpers import as tests.support; it may import anything.
    packages = {init.parent.name for init in REPO.glob("*/__init__.py")} - {"tests"}
    assert packages == set(LAYERS), "a new package needs its place in LAYERS and in docs/ARCHITECTURE.md"


def _imports_of(package: str, forbidden: set[str]) -> list[str]:
    """ "file:line imports target" for each import in ``package`` of a top-level name in ``forbidden``."""
    return [
        f"{SOURCES[module].relative_to(REPO)}:{line} imports {target}"
        for module, imports in IMPORTS.items()
        if module.split(".")[0] == package
        for line, target in imports
        if target.split(".")[0] in forbidden
    ]


@pytest.mark.parametrize("package", list(LAYERS))
def test_imports_go_down_the_layers(package: str) -> None:
    wrong = _imports_of(package, set(LAYERS) - LAYERS[package] - {package})
    assert not wrong, f"{package} may import only {sorted(LAYERS[package])}:\n" + "\n".join(wrong)


def test_the_layers_themselves_have_no_circle() -> None:
    order = list(LAYERS)  # each package may only import packages listed before it
    for package, allowed in LAYERS.items():
        assert all(order.index(lower) < order.index(package) for lower in allowed), package


def _module_graph() -> dict[str, set[str]]:
    return {
        module: {target for _, target in imports if target in SOURCES and target != module}
        for module, imports in IMPORTS.items()
    }


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in sorted(graph[module]):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while not component or component[-1] != module:
                component.append(stack.pop())
            if len(component) > 1:
                circles.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return circles


def test_no_module_imports_itself_around_a_circle() -> None:
    assert _circles(_module_graph()) == []


def test_the_circle_finder_finds_circles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _circles(graph) == [["a", "b", "c"]]


@pytest.mark.parametrize("package", SERVING_SIDE)
def test_the_serving_side_never_imports_the_training_stack(package: str) -> None:
    wrong = _imports_of(package, TRAINING_STACK)
    assert not wrong, "\n".join(wrong)


def test_every_package_is_installed_and_shipped() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    assert {pattern.rstrip("*") for pattern in include} == set(LAYERS)
    copied = set(re.findall(r"^COPY (\w+) \./\1$", (REPO / "Dockerfile").read_text(), flags=re.M))
    assert copied == set(LAYERS)


# Inside service/: the model side (ONNX Runtime, tokenising, the micro-batcher) is below the caches and
# the HTTP edge; the value type they share lives in service/embeddings.py.
SERVICE_MODEL_MAY_NOT_IMPORT = ("service.cache", "service.api", "service.flow", "service.registry")


def test_the_model_side_of_the_service_imports_neither_the_caches_nor_the_http_edge() -> None:
    wrong = [
        f"{SOURCES[module].relative_to(REPO)}:{line} imports {target}"
        for module, imports in IMPORTS.items()
        if module.startswith("service.model")
        for line, target in imports
        if target.startswith(SERVICE_MODEL_MAY_NOT_IMPORT)
    ]
    assert not wrong, "\n".join(wrong)
