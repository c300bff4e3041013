"""Several models in one process (MARC_ARTIFACTS), on a real uvicorn server and ONNX Runtime: each
request answered by the model its `model` names with that model's vectors, unknown names a 404
listing the served ones, independent queues (a flooded model does not starve another), the single
MARC_ARTIFACT service as before, and `POST /admin/reload` (behind the key) swapping, adding and
removing models, refusing bad artifacts while the old ones keep serving, one reload at a time."""

from __future__ import annotations

import asyncio
import gc
import shutil
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.app import create_app
from service.runtime import load_service_encoders
from service.settings import Settings
from tests.support.artifacts import rename_graph_input
from tests.support.load import post_all
from tests.support.reference import onnx_reference, served_fingerprint
from tests.support.servers import LiveServer

TEXTS = ["red leather running shoes", "wireless bluetooth speaker, waterproof", "vintage wooden chair"]
KEY = "admin-key-7f3e"
AUTH = {"Authorization": f"Bearer {KEY}"}


def _vectors(response: httpx.Response) -> np.ndarray:
    return np.array([d["embedding"] for d in response.json()["data"]])


def _link(target: Path, link: Path) -> None:
    """Point ``link`` at ``target`` in one rename, as a deployment switches its current model."""
    temporary = link.with_name(link.name + ".new")
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(target)
    temporary.replace(link)


def _tampered_copy(source: Path, destination: Path) -> Path:
    """A copy of ``source`` whose served model file has one byte changed (the manifest left as is)."""
    shutil.copytree(source, destination)
    manifest = (destination / "manifest.json").read_text()
    for name in ("model.int8.onnx", "model.onnx"):
        if f'"{name}"' in manifest:
            path = destination / name
            data = bytearray(path.read_bytes())
            data[len(data) // 2] ^= 0xFF
            path.write_bytes(bytes(data))
    return destination


def test_two_models_side_by_side_answer_with_their_own_vectors(
    tiny_artifact: Path, tiny_artifact_other: Path
) -> None:
    first, second = onnx_reference(tiny_artifact, TEXTS), onnx_reference(tiny_artifact_other, TEXTS)
    items = [{"id": f"sku-{i}", "text": text} for i, text in enumerate(TEXTS)]
    with (
        LiveServer(artifacts=f"shop={tiny_artifact},news={tiny_artifact_other}") as live,
        live.client() as client,
    ):
        default = client.post("/v1/embed", json={"items": items})
        shop = client.post("/v1/embed", json={"items": items, "model": "shop"})
        news = client.post("/v1/embed", json={"items": items, "model": "news"})
        openai = client.post("/v1/embeddings", json={"input": TEXTS, "model": "news"})
        looked_up = client.post("/v1/items/lookup", json={"ids": ["sku-0"], "model": "news"})
        models = client.get("/v1/models").json()["data"]
        ready = client.get("/readyz").json()
        embedded = live.metrics()["marc_items_embedded_total"]
    assert default.json()["model"] == shop.json()["model"] == "shop"  # the first named is the default
    np.testing.assert_allclose(_vectors(default), first, atol=1e-5)
    np.testing.assert_allclose(_vectors(news), second, atol=1e-5)
    np.testing.assert_allclose(_vectors(openai), second, atol=1e-5)
    assert openai.json()["model"] == "news"
    assert shop.json()["fingerprint"] == served_fingerprint(tiny_artifact)
    assert (
        news.json()["fingerprint"]
        == looked_up.json()["fingerprint"]
        == served_fingerprint(tiny_artifact_other)
    )
    np.testing.assert_allclose(_vectors(looked_up), second[:1], atol=1e-5)
    cards = {card["id"]: card for card in models}
    assert set(cards) == {"shop", "news"}
    assert cards["news"]["fingerprint"] == served_fingerprint(tiny_artifact_other)
    assert (cards["news"]["dim"], cards["news"]["max_length"], cards["news"]["variant"]) == (16, 32, "int8")
    assert [cards["shop"]["default"], cards["news"]["default"]] == [True, False]
    assert ready["model"] == "shop" and ready["models"] == ["shop", "news"]
    assert {labels["model"] for labels, _ in embedded} == {"shop", "news"}


def test_a_directory_of_artifacts_and_the_default_model(
    tiny_artifact: Path, tiny_artifact_other: Path, tmp_path: Path
) -> None:
    (tmp_path / "a").symlink_to(tiny_artifact)
    (tmp_path / "b").symlink_to(tiny_artifact_other)
    (tmp_path / "notes").mkdir()  # no manifest: not a model
    with LiveServer(artifacts=str(tmp_path), default_model="b") as live, live.client() as client:
        answer = client.post("/v1/embed", json={"items": [{"text": TEXTS[0]}]}).json()
        names = [card["id"] for card in client.get("/v1/models").json()["data"]]
    assert names == ["a", "b"]
    assert answer["model"] == "b" and answer["fingerprint"] == served_fingerprint(tiny_artifact_other)


def test_model_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="not both"):
        Settings(artifact=Path("/a"), artifacts="x=/b")
    with pytest.raises(ValueError, match="is required"):
        Settings()


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/embed", {"items": [{"text": "a"}], "model": "nope"}),
        ("/v1/embeddings", {"input": "a", "model": "nope"}),
        ("/v1/items/lookup", {"ids": ["a"], "model": "nope"}),
    ],
)
def test_an_unknown_model_is_a_404_listing_the_served_names(
    tiny_artifact: Path, tiny_artifact_other: Path, path: str, body: dict[str, object]
) -> None:
    with (
        LiveServer(artifacts=f"shop={tiny_artifact},news={tiny_artifact_other}") as live,
        live.client() as client,
    ):
        response = client.post(path, json=body)
    assert response.status_code == 404
    assert response.json() == {
        "error": {
            "message": "model 'nope' is not served (served: shop, news)",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        }
    }


def test_marc_artifact_serves_one_model_as_before(tiny_artifact: Path) -> None:
    with LiveServer(artifact=tiny_artifact) as live, live.client() as client:
        plain = client.post("/v1/embed", json={"items": [{"text": TEXTS[0]}]})
        named = client.post("/v1/embed", json={"items": [{"text": TEXTS[0]}], "model": "tiny-artifact"})
        unknown = client.post("/v1/embed", json={"items": [{"text": TEXTS[0]}], "model": "other"})
        # OpenAI clients send their own model names; the single-model service answers them all.
        openai = client.post("/v1/embeddings", json={"input": TEXTS[0], "model": "text-embedding-3-small"})
        models = client.get("/v1/models").json()["data"]
    assert plain.json()["model"] == named.json()["model"] == openai.json()["model"] == "tiny-artifact"
    np.testing.assert_allclose(_vectors(openai), _vectors(plain), atol=1e-6)
    assert unknown.status_code == 404 and "served: tiny-artifact" in unknown.json()["error"]["message"]
    assert [(card["id"], card["default"]) for card in models] == [("tiny-artifact", True)]


def test_a_flooded_model_does_not_starve_another(
    export_tiny: Callable[..., Path], tiny_artifact: Path, tmp_path: Path
) -> None:
    # "slow": 512-token texts through all 4 layers; "quick": the usual tiny model on short texts.
    slow = export_tiny(layer=4, max_length=512)
    long_texts = [" ".join(f"word{i}-{j}" for j in range(400)) for i in range(2000)]
    flood = [
        {"items": [{"text": text} for text in long_texts[i : i + 16]], "model": "slow"}
        for i in range(0, 960, 16)
    ]
    quick = [{"items": [{"text": f"quick item {i}"}], "model": "quick"} for i in range(40)]
    with LiveServer(
        artifacts=f"slow={slow},quick={tiny_artifact}", max_queue_items=16, max_text_chars=10_000
    ) as live:

        async def both() -> tuple[object, object]:
            flooding = asyncio.ensure_future(post_all(live.url, "/v1/embed", flood, concurrency=24))
            await asyncio.sleep(0.2)  # the slow model's queue is full by now
            answered = await post_all(live.url, "/v1/embed", quick, concurrency=2)
            return await flooding, answered

        flooded, answered = asyncio.run(both())
        rejections = {
            labels["model"]: value for labels, value in live.metrics()["marc_overload_rejections_total"]
        }
    assert flooded.statuses[503] > 0, flooded.statuses  # the slow model was past its queue limit...
    assert answered.statuses == {200: 40}, answered.statuses  # ...and the other answered every request
    assert rejections["slow"] > 0 and rejections["quick"] == 0


def test_admin_reload_needs_the_key(tiny_artifact: Path) -> None:
    with LiveServer(artifact=tiny_artifact, api_key=KEY) as live, live.client() as client:
        missing = client.post("/admin/reload")
        wrong = client.post("/admin/reload", headers={"Authorization": "Bearer nope"})
        right = client.post("/admin/reload", headers=AUTH)
    assert missing.status_code == wrong.status_code == 401
    assert missing.json()["error"]["code"] == "invalid_api_key"
    assert right.status_code == 200 and right.json()["status"] == "unchanged"
    with LiveServer(artifact=tiny_artifact) as live, live.client() as client:
        off = client.post("/admin/reload")
    assert off.status_code == 403 and off.json()["error"]["code"] == "admin_disabled"


def test_admin_reload_swaps_adds_and_removes_and_never_serves_old_vectors_for_the_new_model(
    tiny_artifact: Path, tiny_artifact_other: Path, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    models.mkdir()
    _link(tiny_artifact, models / "shop")
    old, new = onnx_reference(tiny_artifact, TEXTS), onnx_reference(tiny_artifact_other, TEXTS)
    items = [{"id": f"sku-{i}", "text": text} for i, text in enumerate(TEXTS)]
    with LiveServer(artifacts=str(models), api_key=KEY) as live, live.client(headers=AUTH) as client:
        before = client.post("/v1/embed", json={"items": items})
        again = client.post("/v1/embed", json={"items": items})
        _link(tiny_artifact_other, models / "shop")  # swap
        _link(tiny_artifact, models / "extra")  # add
        reloaded = client.post("/admin/reload")
        after = client.post("/v1/embed", json={"items": items})
        looked_up = client.post("/v1/items/lookup", json={"ids": ["sku-0"]})
        extra = client.post("/v1/embed", json={"items": items, "model": "extra"})
        (models / "extra").unlink()  # remove
        removed = client.post("/admin/reload")
        gone = client.post("/v1/embed", json={"items": items, "model": "extra"})
        info = live.metrics()["marc_model_info"]
    assert [d["cached"] for d in again.json()["data"]] == [True] * 3  # the old model's vectors are cached
    np.testing.assert_allclose(_vectors(before), old, atol=1e-5)
    assert reloaded.status_code == 200, reloaded.text
    changes = {m["name"]: m for m in reloaded.json()["models"]}
    assert reloaded.json()["status"] == "reloaded"
    assert changes["shop"]["change"] == "swapped" and changes["extra"]["change"] == "added"
    assert changes["shop"]["previous_fingerprint"] == served_fingerprint(tiny_artifact)
    assert changes["shop"]["fingerprint"] == served_fingerprint(tiny_artifact_other)
    # Same texts, same ids, same name: the new model computes them (its fingerprint keys its cache).
    assert after.json()["fingerprint"] == served_fingerprint(tiny_artifact_other)
    assert [d["cached"] for d in after.json()["data"]] == [False] * 3
    np.testing.assert_allclose(_vectors(after), new, atol=1e-5)
    np.testing.assert_allclose(_vectors(looked_up), new[:1], atol=1e-5)
    np.testing.assert_allclose(_vectors(extra), old, atol=1e-5)
    assert [d["cached"] for d in extra.json()["data"]] == [True] * 3  # same artifact, same key space
    assert {m["name"]: m["change"] for m in removed.json()["models"]} == {
        "shop": "unchanged",
        "extra": "removed",
    }
    assert gone.status_code == 404
    assert [labels["model"] for labels, _ in info] == ["shop"]  # the label follows the served set
    assert [labels["fingerprint"] for labels, _ in info] == [served_fingerprint(tiny_artifact_other)]


@pytest.mark.parametrize("damage", ["file_changed", "graph_renamed"])
def test_a_bad_replacement_is_refused_and_the_old_models_keep_serving(
    tiny_artifact: Path, tiny_artifact_other: Path, tmp_path: Path, damage: str
) -> None:
    models = tmp_path / "models"
    models.mkdir()
    _link(tiny_artifact, models / "shop")
    _link(tiny_artifact, models / "news")
    if damage == "file_changed":
        bad = _tampered_copy(tiny_artifact_other, tmp_path / "bad")
    else:  # the manifest re-recorded to match: only the graph check can tell
        bad = shutil.copytree(tiny_artifact_other, tmp_path / "bad")
        rename_graph_input(bad, "model.int8.onnx")  # the variant served on CPU
    expected = onnx_reference(tiny_artifact, TEXTS)
    with LiveServer(artifacts=str(models), api_key=KEY) as live, live.client(headers=AUTH) as client:
        _link(tiny_artifact_other, models / "news")  # a good change...
        _link(bad, models / "shop")  # ...and a bad one in the same reload: neither is applied
        refused = client.post("/admin/reload")
        shop = client.post("/v1/embed", json={"items": [{"text": t} for t in TEXTS], "model": "shop"})
        news = client.post("/v1/embed", json={"items": [{"text": t} for t in TEXTS], "model": "news"})
        ready = client.get("/readyz")
        failed = live.metric("marc_model_reloads_total", result="failed")
        _link(tiny_artifact_other, models / "shop")  # fixed: the next reload goes through
        fixed = client.post("/admin/reload")
    assert refused.status_code == 422, refused.text
    error = refused.json()["error"]
    assert error["code"] == "reload_failed" and error["param"] == "shop"
    reason = "sha256" if damage == "file_changed" else "graph inputs"
    assert reason in error["message"] and "still serving" in error["message"]
    for answer in (shop, news):  # neither model changed: never half-loaded
        assert answer.json()["fingerprint"] == served_fingerprint(tiny_artifact)
        np.testing.assert_allclose(_vectors(answer), expected, atol=1e-5)
    assert ready.status_code == 200 and failed == 1
    assert fixed.status_code == 200
    assert {m["name"]: m["change"] for m in fixed.json()["models"]} == {"news": "swapped", "shop": "swapped"}


def test_concurrent_reloads_take_turns(
    tiny_artifact: Path, tiny_artifact_other: Path, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    models.mkdir()
    _link(tiny_artifact, models / "shop")
    with LiveServer(artifacts=str(models), api_key=KEY) as live:
        _link(tiny_artifact_other, models / "shop")
        answers: list[httpx.Response] = []

        def reload() -> None:
            answers.append(httpx.post(f"{live.url}/admin/reload", headers=AUTH, timeout=60))

        threads = [threading.Thread(target=reload) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        ok = live.metric("marc_model_reloads_total", result="ok")
    # One reload loaded the new artifact; the ones that waited for it found nothing left to do.
    assert sorted(answer.json()["status"] for answer in answers) == ["reloaded", "unchanged", "unchanged"]
    assert ok == 3


def test_a_replaced_model_is_unloaded_including_one_loaded_before_the_server_started(
    tiny_artifact: Path, tiny_artifact_other: Path, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    models.mkdir()
    _link(tiny_artifact, models / "shop")
    settings = Settings(artifacts=str(models))

    async def swap() -> tuple[bool, bool]:
        encoders = load_service_encoders(settings)  # as `marc serve` does before the server starts
        first = weakref.ref(encoders["shop"])
        app = create_app(settings, encoders=encoders)
        del encoders
        async with app.router.lifespan_context(app) as state:
            registry = state["runtime"].models
            second = weakref.ref(registry.default.encoder)
            _link(tiny_artifact_other, models / "shop")
            await registry.reload("test")
            gc.collect()
            return first() is None, second() is None

    first_gone, same = asyncio.run(swap())
    assert first_gone and same


def test_requests_in_flight_on_the_old_model_finish_on_it(
    tiny_artifact: Path, tiny_artifact_other: Path, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    models.mkdir()
    _link(tiny_artifact, models / "shop")
    old = onnx_reference(tiny_artifact, TEXTS)
    # A 1.5 s batch window: the first request is still waiting for the old model when the reload runs.
    with LiveServer(artifacts=str(models), api_key=KEY, max_wait_ms=1500) as live:
        answers: dict[str, httpx.Response] = {}

        def embed() -> None:
            body = {"items": [{"text": text} for text in TEXTS]}
            answers["in_flight"] = httpx.post(f"{live.url}/v1/embed", json=body, headers=AUTH, timeout=60)

        in_flight = threading.Thread(target=embed)
        in_flight.start()
        time.sleep(0.5)
        _link(tiny_artifact_other, models / "shop")
        reloaded = httpx.post(f"{live.url}/admin/reload", headers=AUTH, timeout=60)
        finished_first = not in_flight.is_alive()  # the reload answers once the old model has retired
        in_flight.join(60)
    assert reloaded.status_code == 200 and reloaded.json()["status"] == "reloaded"
    assert finished_first
    answer = answers["in_flight"]
    assert answer.status_code == 200 and answer.json()["fingerprint"] == served_fingerprint(tiny_artifact)
    np.testing.assert_allclose(_vectors(answer), old, atol=1e-5)


def test_marc_artifact_reloads_the_artifact_its_path_names_now(
    tiny_artifact: Path, tiny_artifact_other: Path, tmp_path: Path
) -> None:
    current = tmp_path / "current"
    _link(tiny_artifact, current)
    with LiveServer(artifact=current, api_key=KEY) as live, live.client(headers=AUTH) as client:
        _link(tiny_artifact_other, current)  # a new version behind the same MARC_ARTIFACT
        reloaded = client.post("/admin/reload")
        answer = client.post("/v1/embed", json={"items": [{"text": TEXTS[0]}]})
        openai = client.post("/v1/embeddings", json={"input": TEXTS[0], "model": "text-embedding-3-small"})
    # One model still: served under the new artifact's name, the default of every request.
    assert {m["name"]: m["change"] for m in reloaded.json()["models"]} == {
        "tiny-artifact-other": "added",
        "tiny-artifact": "removed",
    }
    assert reloaded.json()["default"] == "tiny-artifact-other"
    assert answer.json()["model"] == openai.json()["model"] == "tiny-artifact-other"
    assert answer.json()["fingerprint"] == served_fingerprint(tiny_artifact_other)
    np.testing.assert_allclose(_vectors(answer), onnx_reference(tiny_artifact_other, TEXTS[:1]), atol=1e-5)
