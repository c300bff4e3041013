"""Zero-downtime reload of a real `marc serve` process serving two models from a directory of
artifacts: clients loop on both models (and the default) while SIGHUP and `POST /admin/reload` swap
the artifacts under them. Every request must succeed, and every vector must be the one the
artifact named by the answer's fingerprint gives (compared with each artifact's ONNX Runtime
reference), so no request ever gets a half-swapped model or an old model's cached vector under the
new fingerprint. A tampered replacement is refused by SIGHUP while the old model keeps serving."""

from __future__ import annotations

import random
import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.support.load import ClientThreads
from tests.support.reference import onnx_reference, served_fingerprint
from tests.support.servers import ServeProcess

KEY = "reload-key-51c2"
AUTH = {"Authorization": f"Bearer {KEY}"}
POOL = [f"reload item {i}: a cotton shirt, size {i % 7}, colour {i % 5}" for i in range(120)]
MODELS = ("shop", "news", None)  # None = the default (shop)


def _link(target: Path, link: Path) -> None:
    temporary = link.with_name(link.name + ".new")
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(target)
    temporary.replace(link)  # one rename: the link always names a whole artifact


@dataclass
class Answer:
    started: float
    model: str | None
    status: int | str  # the HTTP status, or the transport error's name
    fingerprint: str = ""
    wrong_vectors: int = 0  # vectors unlike the reference of the answer's fingerprint


class Clients(ClientThreads):
    """Threads sending /v1/embed for random models and texts until stopped, checking every vector
    against the reference of the fingerprint its answer names."""

    join_seconds = 60.0

    def __init__(self, url: str, references: dict[str, np.ndarray], clients: int = 6) -> None:
        self.url, self.references = url, references
        self.answers: list[Answer] = []
        super().__init__(clients)

    def _run(self, seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=self.url, timeout=30, headers=AUTH) as client:
            while not self._stop.is_set():
                model = rng.choice(MODELS)
                rows = rng.sample(range(len(POOL)), 3)
                body: dict[str, object] = {"items": [{"text": POOL[row]} for row in rows]}
                if model is not None:
                    body["model"] = model
                started = time.monotonic()
                try:
                    response = client.post("/v1/embed", json=body)
                except httpx.TransportError as exc:
                    self._add(Answer(started, model, type(exc).__name__))
                    continue
                answer = Answer(started, model, response.status_code)
                if response.status_code == 200:
                    content = response.json()
                    answer.fingerprint = content["fingerprint"]
                    reference = self.references.get(answer.fingerprint)
                    vectors = np.array([d["embedding"] for d in content["data"]])
                    answer.wrong_vectors = (
                        len(rows)
                        if reference is None
                        else int((~np.isclose(vectors, reference[rows], atol=1e-5).all(axis=1)).sum())
                    )
                self._add(answer)

    def _add(self, answer: Answer) -> None:
        with self._lock:
            self.answers.append(answer)

    def snapshot(self) -> list[Answer]:
        with self._lock:
            return list(self.answers)


def _served(server: ServeProcess) -> dict[str, str]:
    models = httpx.get(f"{server.url}/v1/models", headers=AUTH, timeout=10).json()["data"]
    return {card["id"]: card["fingerprint"] for card in models}


def _wait_for(server: ServeProcess, name: str, fingerprint: str, timeout: float = 60) -> float:
    """The time at which ``name`` was seen serving ``fingerprint``."""
    deadline = time.monotonic() + timeout
    while _served(server).get(name) != fingerprint:
        assert time.monotonic() < deadline, (
            f"{name} did not switch to {fingerprint[:16]}:\n{server.log()[-3000:]}"
        )
        time.sleep(0.05)
    return time.monotonic()


@pytest.fixture
def models_dir(tiny_artifact: Path, tiny_artifact_other: Path, tmp_path: Path) -> Iterator[Path]:
    models = tmp_path / "models"
    models.mkdir()
    _link(tiny_artifact, models / "shop")
    _link(tiny_artifact_other, models / "news")
    yield models


@pytest.mark.slow
def test_reload_under_constant_load_drops_nothing_and_serves_no_wrong_vector(
    tiny_artifact: Path, tiny_artifact_other: Path, models_dir: Path, tmp_path: Path
) -> None:
    one, other = served_fingerprint(tiny_artifact), served_fingerprint(tiny_artifact_other)
    references = {one: onnx_reference(tiny_artifact, POOL), other: onnx_reference(tiny_artifact_other, POOL)}
    server = ServeProcess(
        tmp_path / "serve.log", artifacts=str(models_dir), default_model="shop", api_key=KEY, max_wait_ms=20
    )
    switched: list[tuple[str | None, str, float]] = []  # (model, new fingerprint, seen serving it at)
    with server, Clients(server.url, references) as clients:
        time.sleep(1.5)
        # 1. SIGHUP swaps shop (the default) to the other artifact.
        _link(tiny_artifact_other, models_dir / "shop")
        server.signal(signal.SIGHUP)
        switched.append(("shop", other, _wait_for(server, "shop", other)))
        time.sleep(1.0)
        # 2. The admin route swaps it back and news to the first artifact in one reload.
        _link(tiny_artifact, models_dir / "shop")
        _link(tiny_artifact, models_dir / "news")
        answer = httpx.post(f"{server.url}/admin/reload", headers=AUTH, timeout=60)
        assert answer.status_code == 200, answer.text
        assert {m["name"]: m["change"] for m in answer.json()["models"]} == {
            "news": "swapped",
            "shop": "swapped",
        }
        done = time.monotonic()  # the admin answer comes after the swap
        switched += [("shop", one, done), ("news", one, done)]
        time.sleep(1.0)
        # 3. SIGHUP again, news back to the other artifact.
        _link(tiny_artifact_other, models_dir / "news")
        server.signal(signal.SIGHUP)
        switched.append(("news", other, _wait_for(server, "news", other)))
        time.sleep(1.0)
        reloads = server.metric("marc_model_reloads_total", result="ok")
    answers = clients.snapshot()
    failed = [a for a in answers if a.status != 200]
    assert not failed, f"{len(failed)} of {len(answers)} failed, e.g. {failed[:3]}"
    assert sum(a.wrong_vectors for a in answers) == 0
    assert reloads == 3 and len(answers) > 100
    for model, fingerprint, at in switched:  # after each switch no request of its model got the old one
        later = [a for a in answers if (a.model or "shop") == model and a.started > at]
        upto = min(
            [a.started for m, _, when in switched if m == model and when > at for a in answers] or [np.inf]
        )
        seen = {a.fingerprint for a in later if a.started < upto}
        assert seen <= {fingerprint}, (model, fingerprint[:16], seen)
    log = server.log()
    assert log.count("reload (SIGHUP) done") == 2
    assert (
        log.count(") unloaded") == 4
    )  # shop; shop and news; news: each old model once its requests finished
    print(f"{len(answers)} requests, {len(failed)} failed, 0 wrong vectors over 3 reloads")


@pytest.mark.slow
def test_sighup_refuses_a_tampered_replacement_and_the_old_model_keeps_serving(
    tiny_artifact: Path, tiny_artifact_other: Path, models_dir: Path, tmp_path: Path
) -> None:
    tampered = shutil.copytree(tiny_artifact_other, tmp_path / "tampered")
    model_file = tampered / "model.int8.onnx"  # the variant served on CPU
    data = bytearray(model_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model_file.write_bytes(bytes(data))
    one, other = served_fingerprint(tiny_artifact), served_fingerprint(tiny_artifact_other)
    references = {one: onnx_reference(tiny_artifact, POOL), other: onnx_reference(tiny_artifact_other, POOL)}
    server = ServeProcess(
        tmp_path / "serve.log", artifacts=str(models_dir), default_model="shop", api_key=KEY
    )
    with server, Clients(server.url, references, clients=3) as clients:
        time.sleep(1.0)
        _link(tampered, models_dir / "shop")
        server.signal(signal.SIGHUP)
        deadline = time.monotonic() + 60
        while server.metric("marc_model_reloads_total", result="failed") < 1:
            assert time.monotonic() < deadline, server.log()[-3000:]
            time.sleep(0.1)
        refused_at = time.monotonic()
        time.sleep(1.0)
        served = _served(server)
    answers = clients.snapshot()
    assert [a for a in answers if a.status != 200] == []
    assert sum(a.wrong_vectors for a in answers) == 0
    assert served == {"news": other, "shop": one}  # nothing changed, the good model included
    after = {a.fingerprint for a in answers if a.model != "news" and a.started > refused_at}
    assert after == {one}
    log = server.log()
    assert "reload (SIGHUP) failed: reload refused: model 'shop'" in log
    assert "model.int8.onnx" in log and "sha256" in log and "still serving" in log
