"""loadtest/first_vector.py on a stand-in repository: a Makefile whose `serve` prints the phase lines
and starts a real HTTP server answering the quickstart request after a pause."""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

import pytest

from loadtest import first_vector


@pytest.fixture(autouse=True)
def _own_temp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The script's folder (clone, log) under the test's own: nothing left in /tmp."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))


SERVER = """\
import json, sys, time
from http.server import BaseHTTPRequestHandler, HTTPServer

time.sleep(1.5)  # the server's start


class Embed(BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        answer = {"model": "stand-in", "fingerprint": "f" * 64, "dim": 2,
                  "data": [{"id": body["items"][0]["id"], "embedding": [0.5, 1.0]}]}
        self.send_response(200)
        self.end_headers()
        self.wfile.write(json.dumps(answer).encode())


HTTPServer(("127.0.0.1", int(sys.argv[1])), Embed).serve_forever()
"""
MAKEFILE = """\
SERVE_PORT ?= 8000
serve:
\t@sleep 1; echo "==> [1/2] training"
\t@sleep 1; echo "==> [2/2] exporting"
\t@echo "==> serving on $(SERVE_PORT)"
\tpython3 server.py $(SERVE_PORT)
"""


def _repo(path: Path, makefile: str) -> Path:
    path.mkdir()
    (path / "Makefile").write_text(makefile)
    (path / "server.py").write_text(SERVER)
    for command in (["init", "--quiet"], ["add", "."], ["commit", "--quiet", "-m", "stand-in"]):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *command], cwd=path, check=True)
    return path


def test_times_a_fresh_clone_to_the_first_vector_by_phase(tmp_path: Path) -> None:
    repo = _repo(tmp_path / "repo", MAKEFILE)
    (repo / "uncommitted.txt").write_text("not in the clone")
    out, clone = tmp_path / "result.json", tmp_path / "clone"
    assert first_vector.main(["--repo", str(repo), "--keep", str(clone), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    phases = result["phases_seconds"]
    assert list(phases) == ["install", "train", "export", "server start"]
    assert phases["install"] >= 0.9 and phases["train"] >= 0.9 and phases["server start"] >= 1.4
    assert abs(sum(phases.values()) - result["first_vector_seconds"]) < 0.5
    assert result["answer"] == {"model": "stand-in", "fingerprint": "f" * 64, "dim": 2}
    assert (clone / "Makefile").is_file() and not (clone / "uncommitted.txt").exists()
    # The server was stopped with its process group: nothing answers on its port any more.
    assert first_vector.ask(result["port"]) is None


def test_a_serve_that_fails_is_reported_not_waited_for(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = _repo(tmp_path / "repo", "serve:\n\t@echo '==> [1/2] training'; exit 3\n")
    assert first_vector.main(["--repo", str(repo), "--timeout", "60"]) == 1
    assert "make serve exited with status 2" in capsys.readouterr().err
