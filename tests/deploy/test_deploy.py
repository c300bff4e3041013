"""Deploy checks that need no Docker engine and no cluster: the compose stack, the Kubernetes manifests,
the Dockerfile, the Prometheus config and the Grafana dashboard must agree with the code they deploy
(settings names, port, routes, metric names, extras), and `make artifact` must build an artifact end to
end (small configuration)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support.servers import ServeProcess

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILES = [REPO / "docker-compose.yml", REPO / "deploy" / "compose" / "gpu.yml"]
K8S = REPO / "deploy" / "k8s"
K8S_OVERLAYS = [K8S, K8S / "overlays" / "gpu", K8S / "overlays" / "bundled"]
# The precompute Job (CPU, GPU) and the serving stack whose Redis keys it must write.
K8S_PRECOMPUTE = {K8S / "precompute": K8S, K8S / "overlays" / "precompute-gpu": K8S / "overlays" / "gpu"}
# Settings that decide under which keys a vector is stored (or how long it stays): the Job's must be the
# Deployment's, or the replicas never read what it wrote.
KEY_SETTINGS = (
    "MARC_REDIS_URL",
    "MARC_REDIS_CLUSTER",
    "MARC_CACHE_PREFIX",
    "MARC_CACHE_DTYPE",
    "MARC_VARIANT",
    "MARC_INT8_MIN_SPEEDUP",  # with MARC_VARIANT=auto it decides int8 or fp32
)
KEY_SETTINGS += ("MARC_PROVIDER", "MARC_CACHE_TTL_SECONDS")
DOCKERFILE = REPO / "Dockerfile"
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "marc.json"
PROMETHEUS_CONFIG = REPO / "deploy" / "prometheus" / "prometheus.yml"
PROMETHEUS_RULE_TESTS = REPO / "deploy" / "prometheus" / "rules_test.yml"
DEFAULT_VAR = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")
MARC_VAR = re.compile(r"\bMARC_[A-Z0-9_]+\b")
# Labels Prometheus adds at scrape time, not the service.
SCRAPE_LABELS = {"instance", "job"}


def _interpolate(text: str) -> str:
    """Resolve compose's `${VAR:-default}` to its default (what a bare `docker compose up` uses)."""
    return DEFAULT_VAR.sub(lambda m: m.group("default") or "", text)


def _compose(path: Path) -> dict[str, Any]:
    return yaml.safe_load(_interpolate(path.read_text()))


def _dockerfile_stages() -> set[str]:
    return set(re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", DOCKERFILE.read_text(), flags=re.M | re.I))


def _settings_fields() -> dict[str, Any]:
    from service.settings import Settings

    return Settings.model_fields


def _make_settings(artifact: Path, env: dict[str, str]) -> Any:
    """Settings built from MARC_* values as the container would see them (validates the values too)."""
    from service.settings import Settings

    values = {name.removeprefix("MARC_").lower(): value for name, value in env.items()}
    values["artifact"] = artifact
    return Settings(**values)


def _kustomize(directory: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (with its built-in kustomize) is not installed: manifests not rendered")
    rendered = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, check=False
    )
    assert rendered.returncode == 0, f"kubectl kustomize {directory}: {rendered.stderr}"
    return [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]


def _one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def _marc_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    containers = _one(docs, "Deployment", "marc")["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "marc")


def _route_paths(artifact: Path) -> set[str]:
    from service.app import create_app

    # The OpenAPI paths: the route table as published (routers included into the app, prefixes applied).
    return set(create_app(_make_settings(artifact, {})).openapi()["paths"])


# --- docker-compose ------------------------------------------------------------------------------


def test_compose_files_parse_and_every_variable_has_a_default() -> None:
    for path in COMPOSE_FILES:
        text = path.read_text()
        bare = [m.group(0) for m in DEFAULT_VAR.finditer(text) if m.group("default") is None]
        assert not bare, f"{path.name}: variables without a ${{VAR:-default}}: {bare}"
        assert isinstance(_compose(path)["services"], dict), f"{path.name}: no services"


def test_compose_references_real_files_and_stages() -> None:
    stages = _dockerfile_stages()
    for path in COMPOSE_FILES:
        for name, service in _compose(path)["services"].items():
            build = service.get("build")
            if build:
                assert (REPO / build["context"] / "Dockerfile").is_file()
                assert build["target"] in stages, (
                    f"{path.name}: {name} builds unknown target {build['target']}"
                )
            for volume in service.get("volumes", []):
                source = volume["source"] if isinstance(volume, dict) else volume.split(":")[0]
                if not source.startswith("."):
                    continue  # a named volume
                if volume_target(volume) == "/models/current":
                    # Built by `make artifact`, not in a clean clone: it must be the Makefile's default.
                    assert Path(source) == Path("./artifacts/default")
                    assert "ARTIFACT_DIR ?= artifacts/default" in (REPO / "Makefile").read_text()
                else:
                    assert (REPO / source).exists(), f"{path.name}: {name} mounts missing {source}"


def volume_target(volume: str | dict[str, Any]) -> str:
    return volume["target"] if isinstance(volume, dict) else volume.split(":")[1]


def test_compose_stack_shape() -> None:
    services = _compose(REPO / "docker-compose.yml")["services"]
    assert set(services) >= {"marc", "redis", "prometheus", "grafana"}
    redis_command = services["redis"]["command"]
    assert redis_command[redis_command.index("--maxmemory-policy") + 1] == "allkeys-lru"
    assert "--maxmemory" in redis_command
    assert redis_command[redis_command.index("--save") + 1] == ""
    assert services["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    marc = services["marc"]
    assert marc["environment"]["MARC_REDIS_URL"].startswith("redis://redis:6379")
    assert marc["depends_on"]["redis"]["condition"] == "service_healthy"
    assert marc["ports"] == ["8000:8000"]
    assert volume_target(marc["volumes"][0]) == marc["environment"]["MARC_ARTIFACT"]
    gpu = _compose(REPO / "deploy" / "compose" / "gpu.yml")["services"]["marc"]
    assert gpu["build"]["target"] == "gpu"
    device = gpu["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    grafana_mounts = {volume_target(v): v for v in services["grafana"]["volumes"]}
    provider = yaml.safe_load((REPO / "deploy/grafana/provisioning/dashboards/marc.yml").read_text())
    assert provider["providers"][0]["options"]["path"] in grafana_mounts


def test_compose_port_and_settings_match_the_service(tiny_artifact: Path) -> None:
    """Container port = the service's default MARC_PORT, every MARC_* name is a real setting, and the
    compose defaults are valid values for it."""
    fields = _settings_fields()
    assert fields["port"].default == 8000
    for path in COMPOSE_FILES:
        environment = _compose(path)["services"]["marc"]["environment"]
        unknown = [n for n in environment if n.startswith("MARC_") and n[5:].lower() not in fields]
        assert not unknown, f"{path.name}: not settings of service.settings.Settings: {unknown}"
    environment = _compose(REPO / "docker-compose.yml")["services"]["marc"]["environment"]
    settings = _make_settings(
        tiny_artifact, {k: str(v) for k, v in environment.items() if k != "MARC_ARTIFACT"}
    )
    assert settings.port == 8000
    assert settings.host == "0.0.0.0"


# --- Dockerfile ----------------------------------------------------------------------------------


def test_dockerfile_installs_real_extras_without_torch() -> None:
    """Every extra the Dockerfile installs exists in pyproject.toml, resolves to ONNX Runtime, and pulls
    in neither torch nor transformers (the serving images stay light)."""
    script = REPO / "deploy" / "docker" / "pyproject_requirements.py"
    invocations = re.findall(r"pyproject_requirements\.py\s+\S+\s+([a-z,\- ]+?)\s*>", DOCKERFILE.read_text())
    assert sorted(invocations) == ["cpu", "gpu"]
    for extra in invocations:
        listed = subprocess.run(
            [sys.executable, str(script), str(REPO / "pyproject.toml"), *extra.split()],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        names = {re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0].lower() for line in listed}
        assert "onnxruntime" + ("-gpu" if extra == "gpu" else "") in names
        assert not names & {"torch", "transformers", "onnxruntime" if extra == "gpu" else "onnxruntime-gpu"}
    wrong = subprocess.run(
        [sys.executable, str(script), str(REPO / "pyproject.toml"), "no-such-extra"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert wrong.returncode != 0 and "no-such-extra" in wrong.stderr


def test_dockerfile_shape_and_build_context() -> None:
    text = DOCKERFILE.read_text()
    stages = _dockerfile_stages()
    assert {"cpu", "gpu", "cpu-bundled", "gpu-bundled", "model"} <= stages
    # Non-root user, health check on /healthz, artifact path, port 8000.
    assert len(re.findall(r"^USER 10001:10001$", text, flags=re.M)) == 2
    assert len(re.findall(r"^HEALTHCHECK .*\n.*/healthz", text, flags=re.M)) == 2
    assert text.count("MARC_ARTIFACT=/models/current") == 2
    assert re.findall(r"^EXPOSE (\d+)$", text, flags=re.M) == ["8000", "8000"]
    # Dependencies before code: pyproject is installed from in a layer that sees no source.
    deps_stage = text.split("AS cpu-deps", 1)[1].split("FROM ", 1)[0]
    assert "COPY pyproject.toml" in deps_stage and "COPY marc" not in deps_stage
    # The GPU image is the CPU image's Python base + onnxruntime-gpu 1.31 (CUDA 13, cuDNN 9) and NVIDIA's
    # CUDA 13 wheels (no CUDA base image), their folders on LD_LIBRARY_PATH (built and run by
    # tests/deploy/test_image_gpu.py: `make image-check-gpu`).
    assert re.findall(r"^FROM (\S+) AS gpu(?:-deps)?$", text, flags=re.M) == ["cpu-base", "cpu-base"]
    assert "nvidia/cuda" not in text
    assert re.search(r"^ARG ONNXRUNTIME_VERSION=1\.31\.\d+$", text, flags=re.M)
    pins = (REPO / "deploy" / "docker" / "gpu-constraints.txt").read_text()
    assert re.search(r"^nvidia-cudnn-cu13==9\.", pins, flags=re.M)
    assert re.search(r"^nvidia-cuda-runtime==13\.", pins, flags=re.M)
    assert "LD_LIBRARY_PATH=/opt/venv/nvidia/cu13/lib:/opt/venv/nvidia/cudnn/lib" in text
    # Every COPY source from the build context exists and is let through by the .dockerignore allow-list.
    allowed = [
        line[1:].rstrip("/")
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    ]
    for line in re.findall(r"^COPY (?!--from)(.+)$", text, flags=re.M):
        for source in line.split()[:-1]:
            assert (REPO / source).exists(), f"Dockerfile copies missing {source}"
            assert any(source == a or source.startswith(a + "/") for a in allowed), (
                f"{source} is excluded by .dockerignore"
            )


def test_dockerfile_marc_variables_are_settings() -> None:
    fields = _settings_fields()
    names = set(MARC_VAR.findall(DOCKERFILE.read_text()))
    assert names, "the Dockerfile sets no MARC_* variable"
    assert not [n for n in names if n[5:].lower() not in fields]


# --- Python floor ---------------------------------------------------------------------------------


def _python_floor() -> tuple[int, int]:
    required = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    match = re.fullmatch(r">=(\d+)\.(\d+)", required)
    assert match, f"requires-python {required!r} is not a plain floor"
    return int(match.group(1)), int(match.group(2))


def test_every_python_the_project_runs_on_meets_requires_python() -> None:
    """requires-python is the floor the code needs (asyncio.timeout, Task.uncancel: 3.11): ruff targets
    it, the Makefile checks it, and the images' Python (the python base, which the gpu image shares)
    meets it."""
    floor = _python_floor()
    assert floor >= (3, 11)
    ruff = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["ruff"]
    assert ruff["target-version"] == f"py{floor[0]}{floor[1]}"
    assert f"sys.version_info < {floor}" in (REPO / "Makefile").read_text()
    text = DOCKERFILE.read_text()
    images = re.findall(r"PYTHON_IMAGE=python:(\d+)\.(\d+)", text) + re.findall(
        r"python(\d+)\.(\d+) -m venv", text
    )
    assert len(images) == 1 and all((int(major), int(minor)) >= floor for major, minor in images)


def test_make_install_refuses_a_python_below_the_floor(tmp_path: Path) -> None:
    """`make install PYTHON=<older>` stops before creating .venv, naming the version and the fix. No
    Python 3.10 is installed here, so the older interpreter is a script that answers like one."""
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(REPO / name, tmp_path / name)
    older = tmp_path / "python3.10"
    older.write_text('#!/bin/sh\n[ "$1" = --version ] && echo "Python 3.10.14" && exit 0\nexit 1\n')
    older.chmod(0o755)
    result = subprocess.run(
        ["make", "--no-print-directory", "-C", str(tmp_path), "install", f"PYTHON={older}"],
        capture_output=True,
        text=True,
        check=False,
    )
    floor = ".".join(map(str, _python_floor()))
    assert result.returncode != 0
    assert f"needs Python >= {floor}, but {older} is Python 3.10.14" in result.stderr
    assert not (tmp_path / ".venv").exists()


# --- Kubernetes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", K8S_OVERLAYS, ids=lambda p: str(p.relative_to(REPO)))
def test_k8s_manifests_render_and_agree_with_the_service(overlay: Path, tiny_artifact: Path) -> None:
    docs = _kustomize(overlay)
    gpu, bundled = overlay.name == "gpu", overlay.name == "bundled"
    kinds = {d["kind"] for d in docs}
    assert kinds >= {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ConfigMap"}
    assert "StatefulSet" in kinds  # Redis
    assert ("PersistentVolumeClaim" in kinds) != bundled
    deployment = _one(docs, "Deployment", "marc")
    pod = deployment["spec"]["template"]["spec"]
    container = _marc_container(docs)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]

    # Probes hit real routes; startup and liveness on /healthz, readiness on /readyz.
    routes = _route_paths(tiny_artifact)
    probes = {
        kind: container[kind]["httpGet"]["path"]
        for kind in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    assert probes == {"startupProbe": "/healthz", "livenessProbe": "/healthz", "readinessProbe": "/readyz"}
    assert set(probes.values()) <= routes
    assert container["startupProbe"]["failureThreshold"] * container["startupProbe"]["periodSeconds"] >= 120

    # Port: containerPort = MARC_PORT default = the Service's target.
    assert container["ports"][0]["containerPort"] == _settings_fields()["port"].default
    service = _one(docs, "Service", "marc")
    assert service["spec"]["ports"][0]["targetPort"] == container["ports"][0]["name"]
    assert service["spec"]["selector"].items() <= pod_labels.items()

    # Settings from the (generated) ConfigMap: real names, valid values.
    config_name = container["envFrom"][0]["configMapRef"]["name"]
    config = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == config_name)
    fields = _settings_fields()
    assert not [n for n in config["data"] if n[5:].lower() not in fields]
    assert not [e["name"] for e in container.get("env", []) if e["name"][5:].lower() not in fields]
    settings = _make_settings(
        tiny_artifact, {k: v for k, v in config["data"].items() if k != "MARC_ARTIFACT"}
    )
    assert settings.port == 8000 and settings.host == "0.0.0.0"
    assert config["data"]["MARC_REDIS_URL"] == "redis://marc-redis:6379/0"
    _one(docs, "Service", "marc-redis")

    # The artifact volume is mounted read-only where MARC_ARTIFACT points (bundled: it is in the image).
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert ("models" in mounts) != bundled
    if not bundled:
        assert config["data"]["MARC_ARTIFACT"].startswith(mounts["models"]["mountPath"] + "/")
        assert mounts["models"]["readOnly"] is True
        claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if v["name"] == "models"]
        _one(docs, "PersistentVolumeClaim", claims[0])
        loader = yaml.safe_load((K8S / "tools" / "models-loader.yaml").read_text())
        assert loader["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == claims[0]

    # Hardened, graceful: non-root, read-only root fs, preStop sleep shorter than the grace period.
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    sleep_seconds = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert 0 < sleep_seconds < pod["terminationGracePeriodSeconds"] - 15
    assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["memory"]

    # HPA and PDB point at this Deployment's pods.
    hpa = _one(docs, "HorizontalPodAutoscaler", "marc")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "marc"
    pdb = _one(docs, "PodDisruptionBudget", "marc")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()

    assert ("nvidia.com/gpu" in container["resources"]["limits"]) == gpu
    assert container["image"] == "marc-serve:" + ("gpu" if gpu else "cpu-bundled" if bundled else "cpu")
    assert ("gpu" if gpu else "cpu-bundled" if bundled else "cpu") in _dockerfile_stages()
    assert config["data"]["MARC_PROVIDER"] == ("cuda" if gpu else "cpu")


@pytest.mark.parametrize("job_dir", list(K8S_PRECOMPUTE), ids=lambda p: str(p.relative_to(REPO)))
def test_k8s_precompute_job_runs_every_shard_with_the_services_keys(
    job_dir: Path, tiny_artifact: Path
) -> None:
    """The Indexed Job: pod i runs the real `marc precompute` parser's command for shard i of
    `completions`, with settings that validate and write the keys the matching Deployment reads, and a
    failure policy built on the command's exit codes."""
    from marc_serve.cli import build_parser
    from service import cli as service_cli
    from service.shards import Shard

    docs = _kustomize(job_dir)
    gpu = job_dir.name == "precompute-gpu"
    job = _one(docs, "Job", "marc-precompute")
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    assert spec["completionMode"] == "Indexed"
    completions, parallelism = spec["completions"], spec["parallelism"]
    assert 1 <= parallelism <= completions
    (container,) = pod["containers"]

    # Every index gives a valid command for its own shard of `completions`.
    args = container["args"]
    assert args[0] == "precompute" and any("$(JOB_COMPLETION_INDEX)" in arg for arg in args)
    declared = {e["name"]: e for e in container.get("env", [])}
    annotation = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    assert declared["JOB_COMPLETION_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"] == annotation
    shards = set()
    for index in range(completions):
        parsed = build_parser().parse_args([a.replace("$(JOB_COMPLETION_INDEX)", str(index)) for a in args])
        assert parsed.handler is service_cli.run_precompute
        shards.add(Shard.parse(parsed.shard))
    assert shards == {Shard(index, completions) for index in range(completions)}

    # Settings: real names, valid values, and the key space of the Deployment it precomputes for.
    config_name = container["envFrom"][0]["configMapRef"]["name"]
    config = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == config_name)
    fields = _settings_fields()
    assert not [n for n in config["data"] if n[5:].lower() not in fields]
    _make_settings(tiny_artifact, {k: v for k, v in config["data"].items() if k != "MARC_ARTIFACT"})
    serving = _kustomize(K8S_PRECOMPUTE[job_dir])
    served_name = _marc_container(serving)["envFrom"][0]["configMapRef"]["name"]
    served = next(d for d in serving if d["kind"] == "ConfigMap" and d["metadata"]["name"] == served_name)
    for name in KEY_SETTINGS:
        assert config["data"].get(name) == served["data"].get(name), f"{name}: Job and Deployment differ"
    # auto must not be measured per pod: pods that measured differently would write other fingerprints.
    if config["data"].get("MARC_VARIANT", "auto") == "auto":
        assert config["data"].get("MARC_INT8_MIN_SPEEDUP") == "0"
    # The artifact to precompute and the catalogue are on the models volume, mounted read-only, next to
    # (not at) the one the Deployment serves.
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    models = mounts["models"]["mountPath"] + "/"
    assert mounts["models"]["readOnly"] is True
    assert config["data"]["MARC_ARTIFACT"].startswith(models)
    assert config["data"]["MARC_ARTIFACT"] != served["data"]["MARC_ARTIFACT"]
    assert args[args.index("--items") + 1].startswith(models)
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in pod["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims["models"] == "marc-models"

    # Retries by exit code: the codes that cannot heal (bad flags, catalogue, artifact) fail the shard at
    # once; Redis unreachable and partial failures are retried (a retry resumes).
    assert pod["restartPolicy"] == "Never" and spec["backoffLimitPerIndex"] >= 1
    fail_now = [r for r in spec["podFailurePolicy"]["rules"] if r["action"] == "FailIndex"]
    assert len(fail_now) == 1 and fail_now[0]["onExitCodes"]["containerName"] == container["name"]
    assert fail_now[0]["onExitCodes"]["operator"] == "In"
    unhealable = {
        service_cli.PRECOMPUTE_USAGE,
        service_cli.PRECOMPUTE_CATALOGUE,
        service_cli.PRECOMPUTE_ARTIFACT,
    }
    assert set(fail_now[0]["onExitCodes"]["values"]) == unhealable
    assert not unhealable & {service_cli.PRECOMPUTE_REDIS, service_cli.PRECOMPUTE_PARTIAL, 0, 1}

    # Hardened like the Deployment; the image and provider of its overlay.
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["image"] == "marc-serve:" + ("gpu" if gpu else "cpu")
    assert ("nvidia.com/gpu" in container["resources"]["limits"]) == gpu
    assert config["data"]["MARC_PROVIDER"] == ("cuda" if gpu else "cpu")


# --- Prometheus and Grafana ----------------------------------------------------------------------


def test_prometheus_config_and_rules_are_valid() -> None:
    promtool = shutil.which("promtool") or shutil.which("promtool", path=str(REPO / ".venv" / "bin"))
    if promtool is None:
        pytest.skip("promtool not found (`make test` fetches it from Debian's prometheus package)")
    # `check config` checks the rule files the config names too; `test rules` runs their unit tests.
    for command in (["check", "config", PROMETHEUS_CONFIG], ["test", "rules", PROMETHEUS_RULE_TESTS]):
        checked = subprocess.run([promtool, *map(str, command)], capture_output=True, text=True, check=False)
        assert checked.returncode == 0, checked.stdout + checked.stderr
    assert yaml.safe_load(PROMETHEUS_CONFIG.read_text())["rule_files"] == ["rules.yml"]
    job = yaml.safe_load(PROMETHEUS_CONFIG.read_text())["scrape_configs"][0]
    assert job["metrics_path"] == "/metrics"
    assert job["dns_sd_configs"][0]["names"] == ["marc"]  # the compose service name
    assert job["dns_sd_configs"][0]["port"] == 8000


def _dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    queries += [v["query"]["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return queries


def test_dashboard_uses_the_provisioned_datasource() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    datasource = yaml.safe_load((REPO / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == uid, panel["title"]
        assert panel["targets"], f"panel {panel['title']!r} has no query"
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("latency", "requests/s", "items", "batch size", "cache hit ratio", "queue depth", "errors"):
        assert topic in titles, f"dashboard has no {topic} panel"
    assert {"0.5", "0.95", "0.99"} <= set(
        re.findall(r"histogram_quantile\(([\d.]+)", " ".join(_dashboard_queries()))
    )


@pytest.fixture(scope="module")
def served_metrics(tiny_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """/metrics of a real `marc serve` (uvicorn, in-process cache) after one /v1/embed request."""
    log_path = tmp_path_factory.mktemp("serve") / "marc-serve.log"
    with (
        ServeProcess(log_path, artifact=tiny_artifact) as server,
        httpx.Client(base_url=server.url, timeout=10) as client,
    ):
        embedded = client.post("/v1/embed", json={"items": [{"id": "sku-1", "text": "red running shoes"}]})
        assert embedded.status_code == 200, embedded.text
        assert client.post("/v1/embed", json={"items": []}).status_code in range(400, 500)  # a 4xx too
        yield client.get("/metrics").text


def test_every_dashboard_metric_is_served(served_metrics: str) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    suffixes = {
        "counter": ["_total"],
        "histogram": ["_bucket", "_sum", "_count"],
        "gauge": [""],
        "info": ["_info"],
    }
    served: set[str] = set()
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(served_metrics):
        for suffix in suffixes.get(family.type, [""]):
            served.add(family.name + suffix)
        for sample in family.samples:
            served.add(sample.name)
            labels.setdefault(sample.name, set()).update(sample.labels)
    for query in _dashboard_queries():
        for name in re.findall(r"\b(marc_[a-z0-9_]+)", query):
            assert name in served, f"dashboard queries {name}, which /metrics does not serve"
        for name, selector in re.findall(r"\b(marc_[a-z0-9_]+)\{([^}]*)\}", query):
            used = set(re.findall(r"([a-z_]+)\s*[=!~]", selector)) - SCRAPE_LABELS
            assert used <= labels.get(name, set()), f"{name} has no label(s) {used - labels.get(name, set())}"
    # The metric names docs/ARCHITECTURE.md lists ("Metrics") are all on the dashboard.
    queried = " ".join(_dashboard_queries())
    for name in (
        "marc_request_duration_seconds",
        "marc_inference_duration_seconds",
        "marc_batch_size",
        "marc_queue_depth",
        "marc_cache_requests_total",
        "marc_items_embedded_total",
        "marc_model_info",
        "marc_overload_rejections_total",
    ):
        assert name in queried, f"{name} is not on the dashboard"


# --- make artifact -------------------------------------------------------------------------------


@pytest.mark.slow
def test_make_artifact_builds_and_then_reuses_a_small_artifact(tmp_path: Path) -> None:
    """The `make serve` build path end to end on the tiny backbone: train -> export (+int8, parity) ->
    artifact; a second run reuses it. `-o install` keeps make from touching the shared .venv."""
    from artifact.manifest import read_manifest

    artifact = tmp_path / "artifact"
    command = [
        "make",
        "--no-print-directory",
        "-C",
        str(REPO),
        "-o",
        "install",
        "artifact",
        "BACKBONE=tiny",
        "LAYER=2",
        "DIM=16",
        "NESTED_DIMS=4,8,16",  # the default build is nested (8,16,32,64 at k = 64)
        f"ARTIFACT_DIR={artifact}",
        f"RUN_DIR={tmp_path / 'run'}",
        # Small synthetic data, two epochs: the build path is under test here, not the model quality.
        f"TRAIN_ARGS=--items 200 --users 100 --epochs 2 --cache-dir {tmp_path / 'features'}",
        "EXPORT_ARGS=--int8",
    ]
    first = subprocess.run(command, capture_output=True, text=True, check=False)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "[1/2] training" in first.stdout and "[2/2] exporting" in first.stdout
    manifest = read_manifest(artifact)
    assert (manifest.backbone.layer, manifest.dim, manifest.name) == (2, 16, "tiny-l2-k16")
    assert manifest.nested_dims == [4, 8, 16] and "nested 4,8,16" in first.stdout
    assert {"fp32", "int8"} <= set(manifest.variants)
    assert not (tmp_path / "artifact.partial").exists()

    second = subprocess.run(command, capture_output=True, text=True, check=False)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "training" not in second.stdout and "exporting" not in second.stdout
    assert read_manifest(artifact).fingerprint == manifest.fingerprint
