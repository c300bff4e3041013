"""A real Prometheus server (the `prometheus` binary of Debian's package, fetched by `make prometheus-tools`)
scraping services under test with the shipped rules, its windows shortened for a test of seconds."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from loadtest.processes import HOST, free_port

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus" / "rules.yml"


def prometheus_binary() -> str | None:
    return shutil.which("prometheus") or shutil.which("prometheus", path=str(REPO / ".venv" / "bin"))


def shortened_rules(window: str, hold: str) -> str:
    """rules.yml with every rate window ``[1m]`` set to ``window`` and every alert's ``for`` to ``hold``:
    the same expressions, on a test's time scale."""
    text = RULES.read_text()
    text, windows = re.subn(r"\[1m\]", f"[{window}]", text)
    text, holds = re.subn(r"(?m)^(\s+for:) \S+$", rf"\1 {hold}", text)
    assert windows and holds, "rules.yml changed shape: no [1m] window or no `for:` left to shorten"
    return text


class PrometheusServer:
    """`prometheus` on a free port of 127.0.0.1 scraping ``targets`` (host:port) as job ``marc`` every
    ``interval`` and evaluating ``rules`` as often; its storage and log live in ``folder``."""

    def __init__(
        self, binary: str, folder: Path, targets: list[str], rules: str, interval: str = "1s"
    ) -> None:
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        (folder / "rules.yml").write_text(rules)
        config = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "rule_files": ["rules.yml"],
            "scrape_configs": [{"job_name": "marc", "static_configs": [{"targets": targets}]}],
        }
        (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log_path = folder / "prometheus.log"
        self._command = [
            binary,
            f"--config.file={folder / 'prometheus.yml'}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address={HOST}:{self.port}",
            "--log.level=warn",
        ]
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> PrometheusServer:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(self._command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            assert self.process.poll() is None, f"prometheus exited:\n{self.log_path.read_text()[-3000:]}"
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"prometheus not ready:\n{self.log_path.read_text()[-3000:]}"
            time.sleep(0.1)

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def query(self, expr: str) -> list[tuple[dict[str, str], float]]:
        """The instant vector of ``expr`` now: [(labels, value), ...]."""
        answer = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10).json()
        assert answer["status"] == "success", answer
        return [(r["metric"], float(r["value"][1])) for r in answer["data"]["result"]]

    def alerts(self, name: str) -> list[dict[str, Any]]:
        """The active (pending or firing) alerts named ``name``."""
        answer = httpx.get(f"{self.url}/api/v1/alerts", timeout=10).json()
        return [a for a in answer["data"]["alerts"] if a["labels"]["alertname"] == name]

    def wait_for(self, what: str, check: Any, timeout: float) -> Any:
        """Poll ``check()`` until it returns something truthy; fail after ``timeout`` s naming ``what``."""
        deadline = time.monotonic() + timeout
        while True:
            found = check()
            if found:
                return found
            assert time.monotonic() < deadline, f"prometheus: {what} not seen within {timeout:.0f} s"
            time.sleep(0.5)
