"""Which artifacts the settings name, as served name -> directory. Read at start-up and again on
every reload (SIGHUP, ``POST /admin/reload``), so a reload sees what changed on disk: a symlink moved
to a new artifact, an artifact directory replaced, an artifact added to or removed from a directory
of artifacts. Environment variables themselves do not change in a running process.

* ``MARC_ARTIFACT=<dir>``: one model, served under its manifest name (the single-model service).
* ``MARC_ARTIFACTS=name=<dir>,name=<dir>``: these models under these names; the first is the default.
* ``MARC_ARTIFACTS=<dir>``: every sub-directory holding a manifest.json, served under its folder name;
  the first in name order is the default (at start-up; a reload keeps the default while it is served).

``MARC_DEFAULT_MODEL`` names the default (the model of requests without ``model``) explicitly.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from artifact.manifest import read_manifest
from artifact.names import MANIFEST_FILE, ArtifactError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class ModelSetError(ValueError):
    """The model configuration (MARC_ARTIFACT(S), MARC_DEFAULT_MODEL) names nothing servable."""


class UnknownModel(LookupError):
    """A request named a model this process does not serve."""

    def __init__(self, name: str, served: list[str]) -> None:
        super().__init__(f"model {name!r} is not served (served: {', '.join(served)})")
        self.name = name
        self.served = served


@dataclass(frozen=True)
class ModelSource:
    name: str
    directory: Path  # resolved: a moved symlink is a new directory
    manifest_sha256: str  # what a reload compares: an artifact replaced in place has another manifest

    def same_artifact(self, other: ModelSource) -> bool:
        return self.directory == other.directory and self.manifest_sha256 == other.manifest_sha256


@dataclass(frozen=True)
class ModelSet:
    """The models the settings name (not marc.config.ModelConfig, which is one model's architecture)."""

    sources: dict[str, ModelSource]  # served name -> artifact, in configuration order
    default: str
    single: bool  # MARC_ARTIFACT: the single-model service of before MARC_ARTIFACTS


def _source(name: str, directory: Path) -> ModelSource:
    manifest = directory / MANIFEST_FILE
    try:
        digest = hashlib.sha256(manifest.read_bytes()).hexdigest()
    except OSError as exc:
        raise ArtifactError(
            f"{manifest}: cannot read the manifest of model {name!r} ({exc.strerror})"
        ) from None
    return ModelSource(name, directory.resolve(), digest)


def _check_name(name: str, where: str) -> str:
    if not NAME.match(name):
        raise ModelSetError(
            f"{where}: model name {name!r} must be 1-64 letters, digits, '.', '_' or '-' (not first)"
        )
    return name


def parse_artifacts(value: str) -> dict[str, Path] | Path:
    """``name=path,name=path`` as a mapping, or a single path (a directory of artifacts)."""
    value = value.strip()
    if "=" not in value:
        return Path(value)
    named: dict[str, Path] = {}
    for entry in (part.strip() for part in value.split(",")):
        if not entry:
            continue
        name, sep, path = entry.partition("=")
        name = _check_name(name.strip(), "MARC_ARTIFACTS")
        if not sep or not path.strip():
            raise ModelSetError(f"MARC_ARTIFACTS: {entry!r} is not name=path")
        if name in named:
            raise ModelSetError(f"MARC_ARTIFACTS: model name {name!r} given twice")
        named[name] = Path(path.strip())
    return named


def read_model_set(
    artifact: Path | None, artifacts: str, default_model: str, current_default: str | None = None
) -> ModelSet:
    """The models the settings name, read from disk now. Raises ModelSetError or ArtifactError
    (naming the file) when they name nothing servable. Without MARC_DEFAULT_MODEL a reload keeps
    ``current_default`` the default while it is still configured (a model added to a directory
    must not take over the requests that name none)."""
    single = artifact is not None
    if artifact is not None:
        name = read_manifest(artifact).name
        sources = {name: _source(name, artifact)}
    else:
        parsed = parse_artifacts(artifacts)
        if isinstance(parsed, Path):
            if not parsed.is_dir():
                raise ModelSetError(f"MARC_ARTIFACTS: {parsed} is not a directory")
            found = sorted(p for p in parsed.iterdir() if (p / MANIFEST_FILE).is_file())
            if not found:
                raise ModelSetError(f"MARC_ARTIFACTS: {parsed} holds no artifact (no */{MANIFEST_FILE})")
            parsed = {_check_name(p.name, str(p)): p for p in found}
        sources = {name: _source(name, path) for name, path in parsed.items()}
    if not sources:
        raise ModelSetError("MARC_ARTIFACTS names no model")
    default = default_model or (current_default if current_default in sources else next(iter(sources)))
    if default not in sources:
        raise ModelSetError(
            f"MARC_DEFAULT_MODEL: {default!r} is not among the configured models ({', '.join(sources)})"
        )
    return ModelSet(sources, default, single)
