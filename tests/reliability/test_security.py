"""Security properties: the API key is compared in constant time and required on /v1/*; probes and
/metrics stay open and leak no secret; no pickle in any loading path; Redis with a password and over
TLS (rediss://); the container runs as a non-root user."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import httpx
import pytest
import redis

from loadtest.processes import free_port
from tests.support.redis_server import RedisProcess
from tests.support.reliability_report import record
from tests.support.servers import LiveServer

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "k3y-with-enough-entropy-2f8c"
REDIS_PASSWORD = "redis-pa55-7d1e"


# --- API key -------------------------------------------------------------------------------------


def _function(path: Path, name: str) -> ast.FunctionDef | ast.AsyncFunctionDef:
    tree = ast.parse(path.read_text())
    functions = (ast.FunctionDef, ast.AsyncFunctionDef)
    return next(n for n in ast.walk(tree) if isinstance(n, functions) and n.name == name)


def test_api_key_is_compared_with_compare_digest_only() -> None:
    check = _function(ROOT / "service" / "api" / "auth.py", "check_api_key")
    calls = {ast.unparse(node.func) for node in ast.walk(check) if isinstance(node, ast.Call)}
    # == / != on secrets returns at the first differing byte: timing reveals how much matched.
    secret_comparisons = [
        ast.unparse(node)
        for node in ast.walk(check)
        if isinstance(node, ast.Compare)
        and any(isinstance(op, ast.Eq | ast.NotEq | ast.In | ast.NotIn) for op in node.ops)
    ]
    assert "hmac.compare_digest" in calls
    assert secret_comparisons == []


def test_api_key_required_on_v1_and_probes_stay_open(tiny_artifact: Path) -> None:
    body = {"items": [{"text": "auth probe"}]}
    attempts = {
        "none": {},
        "wrong": {"authorization": "Bearer nope"},
        "prefix": {"authorization": f"Bearer {API_KEY[:-1]}"},
        "longer": {"authorization": f"Bearer {API_KEY}x"},
        "basic scheme": {"authorization": f"Basic {API_KEY}"},
        "no scheme": {"authorization": API_KEY},
        "other header": {"x-api-key": API_KEY},
    }
    with LiveServer(artifact=tiny_artifact, api_key=API_KEY) as live, live.client() as client:
        refused = {name: client.post("/v1/embed", json=body, headers=h) for name, h in attempts.items()}
        in_query = client.post(f"/v1/embed?api_key={API_KEY}", json=body)
        right = client.post("/v1/embed", json=body, headers={"authorization": f"Bearer {API_KEY}"})
        protected = {
            path: client.request(method, path, json={} if method == "POST" else None).status_code
            for method, path in [
                ("GET", "/v1/models"),
                ("POST", "/v1/embeddings"),
                ("POST", "/v1/items/lookup"),
            ]
        }
        open_routes = {path: client.get(path) for path in ("/healthz", "/readyz", "/metrics")}
    record("api_key", refused_variants=len(attempts) + 1, accepted_with_key=right.status_code == 200)
    assert {name: r.status_code for name, r in refused.items()} == {name: 401 for name in attempts}
    assert all(r.headers["www-authenticate"].startswith("Bearer") for r in refused.values())
    assert in_query.status_code == 401
    assert right.status_code == 200
    assert protected == {"/v1/models": 401, "/v1/embeddings": 401, "/v1/items/lookup": 401}
    # Probes and the scraper need no key (documented in RELIABILITY.md); they must not leak it.
    assert {path: r.status_code for path, r in open_routes.items()} == dict.fromkeys(open_routes, 200)
    assert all(API_KEY not in r.text for r in open_routes.values())


# --- no pickle in loading paths ------------------------------------------------------------------


def _pickle_uses(path: Path) -> list[str]:
    """Imports of pickle-based modules and loaders that unpickle, in one source file."""
    found: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
            if any(
                n and n.split(".")[0] in {"pickle", "cPickle", "dill", "joblib", "cloudpickle"} for n in names
            ):
                found.append(f"{where} imports a pickle module")
        if not isinstance(node, ast.Call):
            continue
        func = ast.unparse(node.func)
        keywords = {k.arg: ast.unparse(k.value) for k in node.keywords}
        if func.endswith("torch.load") and keywords.get("weights_only") != "True":
            found.append(f"{where} torch.load without weights_only=True")
        if re.fullmatch(r"(np|numpy)\.load", func) and keywords.get("allow_pickle", "False") != "False":
            found.append(f"{where} np.load with allow_pickle")
        if func.endswith(("read_pickle", "pickle.load", "pickle.loads", "Unpickler")):
            found.append(f"{where} {func}")
    return found


def test_no_pickle_in_any_loading_path() -> None:
    sources = sorted(p for package in ("marc", "export", "service") for p in (ROOT / package).rglob("*.py"))
    problems = [problem for path in sources for problem in _pickle_uses(path)]
    record("no_pickle", files_scanned=len(sources), findings=len(problems))
    assert len(sources) > 20
    assert problems == []


def test_the_pickle_scan_finds_what_it_looks_for(tmp_path: Path) -> None:
    bad = ROOT / "service" / "_scan_probe.py"  # inside ROOT so relative paths work; removed below
    bad.write_text(
        "import pickle\nimport numpy as np\nimport torch\n"
        "torch.load('m.pt')\nnp.load('a.npy', allow_pickle=True)\npickle.loads(b'')\n"
    )
    try:
        found = _pickle_uses(bad)
    finally:
        bad.unlink()
    assert len(found) == 4, found


# --- Redis with a password and over TLS ----------------------------------------------------------


def _two_embeds(live: LiveServer, text: str) -> list[bool]:
    with live.client() as client:
        return [
            client.post("/v1/embed", json={"items": [{"text": text}]}).json()["data"][0]["cached"]
            for _ in range(2)
        ]


def test_redis_password_from_the_url(tiny_artifact: Path) -> None:
    with RedisProcess() as own_redis:
        admin = redis.Redis(port=own_redis.port)
        admin.config_set("requirepass", REDIS_PASSWORD)
        admin.close()
        url = f"redis://:{REDIS_PASSWORD}@127.0.0.1:{own_redis.port}/0"
        with LiveServer(artifact=tiny_artifact, redis_url=url) as live:
            with_password = _two_embeds(live, "password protected")
            errors_with = live.metric("marc_cache_requests_total", result="error")
            exposed = [live.client().get(p).text for p in ("/readyz", "/metrics")]
        wrong = f"redis://:wrong@127.0.0.1:{own_redis.port}/0"
        # No near-cache: this is about Redis refusing the password (a near-cache would serve the
        # second request's text, computed by the first, without asking Redis).
        with LiveServer(artifact=tiny_artifact, redis_url=wrong, near_cache_bytes=0) as live:
            with_wrong_password = _two_embeds(live, "wrong password")
            errors_wrong = sum(
                live.metric("marc_cache_requests_total", result=result) for result in ("error", "skipped")
            )
            with live.client() as client:
                cache_state = client.get("/readyz").json()["cache"]["status"]
    assert with_password == [False, True] and errors_with == 0
    assert all(REDIS_PASSWORD not in text for text in exposed)
    # A wrong password is an unavailable cache (the start-up ping fails, so it is skipped from then on):
    # requests are answered from the model, every lookup counted as error or skipped.
    assert with_wrong_password == [False, False] and errors_wrong > 0 and cache_state == "skipped"


@pytest.fixture(scope="module")
def self_signed_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def test_redis_over_tls(tiny_artifact: Path, self_signed_cert: tuple[Path, Path]) -> None:
    cert, key = self_signed_cert
    tls_port = free_port()
    tls_args = ["--tls-port", str(tls_port), "--tls-cert-file", str(cert), "--tls-key-file", str(key)]
    tls_args += ["--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no"]
    with RedisProcess(*tls_args) as own_redis:
        url = f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={cert}"
        with LiveServer(artifact=tiny_artifact, redis_url=url) as live:
            cached = _two_embeds(live, "over TLS")
            errors = live.metric("marc_cache_requests_total", result="error")
        plain = redis.Redis(port=own_redis.port)
        tls_keys = len(plain.keys("marc:*"))  # same server seen through its plain port
        plain.close()
    record("redis_tls", tls_port_used=True, hits_over_tls=sum(cached), errors=errors)
    assert cached == [False, True] and errors == 0
    assert tls_keys >= 1


# --- container ----------------------------------------------------------------------------------


def test_container_runs_as_a_non_root_user() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = re.split(r"(?im)^FROM\s+", dockerfile)[1:]
    serving = [stage for stage in stages if re.search(r"(?im)^(CMD|ENTRYPOINT)\b", stage)]
    users = [re.findall(r"(?im)^USER\s+(\S+)", stage) for stage in serving]
    assert serving, "no stage with CMD/ENTRYPOINT"
    for stage_users in users:
        assert stage_users, "a serving stage has no USER directive"
        user = stage_users[-1].split(":")[0]
        assert user not in {"root", "0"}
    record("container", serving_stages=len(serving), users=sorted({u[-1] for u in users}))


def test_metrics_and_probes_need_no_key_by_design(tiny_artifact: Path) -> None:
    """Documented choice: /metrics is open on the service port (Prometheus scrapes it without a
    token); it holds only counters and the model fingerprint. Restrict it at the network level."""
    with LiveServer(artifact=tiny_artifact, api_key=API_KEY) as live:
        text = httpx.get(f"{live.url}/metrics", timeout=10).text
    names = set(re.findall(r"^(marc_\w+?)(?:_bucket|_count|_sum|_created)?[{ ]", text, re.MULTILINE))
    assert "marc_model_info" in names and API_KEY not in text
