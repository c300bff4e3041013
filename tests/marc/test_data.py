"""Datasets: generators (determinism, cold split, signal in the text), the JSON-lines loader and its
errors, CLI. MovieLens: test_movielens.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import Ridge
from sklearn.metrics import roc_auc_score

from marc.data import (
    RecDataset,
    load_dataset,
    load_jsonl,
    make_entities,
    make_synthetic,
    save_dataset,
)
from marc.data.entities import ENTITIES
from marc.data.simulate import click_logits
from marc_serve.cli import main as marc_main
from records.errors import DataError
from records.jsonl import iter_items_jsonl

SMALL = {"num_users": 300, "interactions_per_user": 30}


def _rows(split) -> list[tuple[int, int, float]]:
    return sorted(zip(split.users.tolist(), split.items.tolist(), split.labels.tolist(), strict=True))


def _assert_same(a: RecDataset, b: RecDataset) -> None:
    assert a.item_ids == b.item_ids and a.item_texts == b.item_texts and a.num_users == b.num_users
    for name in ("train", "valid", "test"):
        assert _rows(getattr(a, name)) == _rows(getattr(b, name)), name
    assert np.array_equal(a.cold_items, b.cold_items)


# ---------------------------------------------------------------- generators


@pytest.mark.parametrize("make", [make_synthetic, make_entities])
def test_generators_are_deterministic_by_seed(make) -> None:
    first, again, other = make(seed=3, **SMALL), make(seed=3, **SMALL), make(seed=4, **SMALL)
    _assert_same(first, again)
    assert first.train.users.dtype == np.int64 and first.train.labels.dtype == np.float32
    assert _rows(first.test) != _rows(other.test)


@pytest.mark.parametrize("make", [make_synthetic, make_entities])
def test_cold_items_never_in_train_and_cold_rows_reach_valid_and_test(make) -> None:
    ds = make(seed=0, **SMALL)
    assert not ds.cold_items[ds.train.items].any()
    assert np.array_equal(ds.cold_items, ~np.isin(np.arange(ds.num_items), ds.train.items))
    held_out = ds.meta["held_out_items"]
    assert held_out.sum() == round(ds.meta["params"]["cold_fraction"] * ds.num_items)
    assert ds.cold_items[held_out].all()
    # Each held-out item sends all its rows to valid or all to test, and both get some.
    in_valid = set(ds.valid.items[held_out[ds.valid.items]].tolist())
    in_test = set(ds.test.items[held_out[ds.test.items]].tolist())
    assert in_valid and in_test and not in_valid & in_test
    warm_rows = len(ds.train) + len(ds.warm(ds.valid)) + len(ds.warm(ds.test))
    assert 0.75 < len(ds.train) / warm_rows < 0.85


@pytest.mark.parametrize("make", [make_synthetic, make_entities])
def test_positive_rate_in_range_and_known_model_predicts_clicks(make) -> None:
    ds = make(seed=0)
    for split in (ds.train, ds.valid, ds.test):
        assert 0.2 <= split.labels.mean() <= 0.4
    cold_test = ds.cold(ds.test)
    oracle_auc = roc_auc_score(cold_test.labels, click_logits(ds.meta, cold_test.users, cold_test.items))
    assert oracle_auc > 0.75


def test_synthetic_clicks_are_recoverable_from_item_text_on_cold_items() -> None:
    """Bag-of-words of the text, fit on warm items only, recovers what drives clicks on cold items."""
    ds = make_synthetic(seed=0)
    meta = ds.meta
    bow = CountVectorizer(token_pattern=r"[A-Za-z]+").fit_transform(ds.item_texts)
    targets = np.column_stack([meta["item_features"], meta["item_bias"]])
    warm = ~ds.cold_items
    predicted = Ridge(alpha=1.0).fit(bow[warm], targets[warm]).predict(bow[~warm])
    features, bias = targets.copy(), targets[:, -1].copy()
    features[~warm] = predicted
    bias[~warm] = predicted[:, -1]
    test = ds.cold(ds.test)
    from_text = (
        meta["user_bias"][test.users]
        + np.einsum("nf,nf->n", meta["user_weights"][test.users], features[test.items, :-1])
        + bias[test.items]
    )
    text_auc = roc_auc_score(test.labels, from_text)
    # What an ids-only model knows about a cold item: nothing beyond the user.
    ids_only_auc = roc_auc_score(test.labels, meta["user_bias"][test.users])
    oracle_auc = roc_auc_score(test.labels, click_logits(meta, test.users, test.items))
    assert text_auc > ids_only_auc + 0.15
    assert text_auc > oracle_auc - 0.05


def test_entity_texts_name_only_the_entity_and_words_do_not_reveal_the_category() -> None:
    names = [name for table in ENTITIES.values() for name in table]
    assert len(names) == len(set(names)) >= 250 and 8 <= len(ENTITIES) <= 12
    ds = make_entities(seed=0)
    assert sorted(ds.item_texts) == sorted(names)
    category_words = {word for category in ENTITIES for word in category.split("_")}
    assert not any(word in text.lower().split() for text in ds.item_texts for word in category_words)
    # Word overlap cannot carry the category from warm entities to cold ones.
    bow = CountVectorizer(token_pattern=r"\w+").fit_transform(ds.item_texts)
    onehot = ds.meta["item_features"]
    warm = ~ds.cold_items
    predicted = Ridge(alpha=1.0).fit(bow[warm], onehot[warm]).predict(bow[~warm])
    accuracy = (predicted.argmax(1) == ds.meta["item_category"][~warm]).mean()
    assert accuracy < 0.35


def test_entities_num_items_subsets_the_table() -> None:
    ds = make_entities(seed=1, num_items=50, **SMALL)
    assert ds.num_items == 50 and len(set(ds.item_texts)) == 50
    with pytest.raises(ValueError, match="num_items"):
        make_entities(num_items=10_000)


# ---------------------------------------------------------------- JSON lines


def _write_jsonl(path: Path, records: list[object]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


ITEMS = [
    {"item_id": 1, "text": "red shoes"},
    {"item_id": "b", "text": "blue phone"},
    {"item_id": "c", "text": "lamp"},
]


def test_jsonl_random_split_with_ids_labels_and_cold_fraction(tmp_path: Path) -> None:
    _write_jsonl(tmp_path / "items.jsonl", ITEMS)
    labels = [0, 1, True, False, 1.0]
    rows = [
        {"user_id": u, "item_id": ["1", "b", "c"][k % 3], "label": labels[k % 5]}
        for u in (5, "x", 7)
        for k in range(20)
    ]
    _write_jsonl(tmp_path / "interactions.jsonl", rows)
    ds = load_jsonl(tmp_path, seed=1)
    assert ds.item_ids == ["1", "b", "c"] and ds.item_texts[1] == "blue phone"
    assert ds.meta["user_ids"] == ["5", "x", "7"] and ds.num_users == 3
    assert len(ds.train) + len(ds.valid) + len(ds.test) == 60
    assert sorted(np.concatenate([ds.train.labels, ds.valid.labels, ds.test.labels]).tolist()) == sorted(
        float(labels[k % 5]) for _ in range(3) for k in range(20)
    )
    _assert_same(ds, load_jsonl(tmp_path, seed=1))
    held = load_jsonl(tmp_path, seed=1, cold_fraction=0.34)
    assert held.cold_items.sum() == 1 and not held.cold_items[held.train.items].any()


def test_jsonl_timestamps_split_by_time_per_user(tmp_path: Path) -> None:
    _write_jsonl(tmp_path / "items.jsonl", ITEMS)
    rows = [
        {"user_id": "u", "item_id": "1" if t < 18 else "c", "label": 1, "timestamp": 100 - t}
        for t in range(20)
    ]
    ds = load_jsonl(_write_jsonl(tmp_path / "interactions.jsonl", rows).parent)
    # The newest 2 rows (t=0, 1: item "1") are test; 10% of the other 18 (t=2, item "1") is valid;
    # item "c" only has the oldest rows, so it is warm; item "b" has none, so it is cold.
    assert len(ds.test) == 2 and len(ds.valid) == 1 and len(ds.train) == 17
    assert ds.cold_items.tolist() == [False, True, False]
    with pytest.raises(ValueError, match="cold_fraction"):
        load_jsonl(tmp_path, cold_fraction=0.5)


def test_save_dataset_round_trip_keeps_split_users_and_meta(tmp_path: Path) -> None:
    ds = make_synthetic(num_items=200, seed=2, **SMALL)
    save_dataset(ds, tmp_path / "saved")
    back = load_dataset(f"jsonl:{tmp_path / 'saved'}")
    _assert_same(ds, back)
    assert back.name == "synthetic" and back.meta["params"] == ds.meta["params"]
    assert np.allclose(click_logits(back.meta, ds.test.users, ds.test.items),
                       click_logits(ds.meta, ds.test.users, ds.test.items))  # fmt: skip


@pytest.mark.parametrize(
    ("file", "lines", "expected"),
    [
        ("items.jsonl", ['{"item_id": 1, "text": "a"}', "{not json"], "items.jsonl line 2: not valid JSON"),
        ("items.jsonl", ["[1, 2]"], "items.jsonl line 1: expected a JSON object"),
        ("items.jsonl", ['{"text": "a"}'], "items.jsonl line 1: missing field 'item_id'"),
        ("items.jsonl", ['{"item_id": [1], "text": "a"}'], "line 1: field 'item_id' must be a string"),
        ("items.jsonl", ['{"item_id": true, "text": "a"}'], "line 1: field 'item_id' must be a string"),
        ("items.jsonl", ['{"item_id": 1}'], "items.jsonl line 1: missing field 'text'"),
        ("items.jsonl", ['{"item_id": 1, "text": "  "}'], "items.jsonl line 1: field 'text' is empty"),
        ("items.jsonl", ['{"item_id": 1, "text": 5}'], "items.jsonl line 1: field 'text' must be a string"),
        ("items.jsonl", ['{"item_id": 1, "text": "a"}', '{"item_id": "1", "text": "b"}'],
         "items.jsonl line 2: field 'item_id': duplicate item id '1'"),
        ("interactions.jsonl", ['{"user_id": 1, "item_id": 1, "label": 1}',
                                '{"user_id": 1, "item_id": 1, "label": "yes"}'],
         "interactions.jsonl line 2: field 'label' must be 0 or 1, got 'yes'"),
        ("interactions.jsonl", ['{"user_id": 1, "item_id": 1, "label": 2}'],
         "line 1: field 'label' must be 0 or 1, got 2"),
        ("interactions.jsonl", ['{"user_id": 1, "item_id": 1}'], "line 1: missing field 'label'"),
        ("interactions.jsonl", ['{"item_id": 1, "label": 1}'], "line 1: missing field 'user_id'"),
        ("interactions.jsonl", ['{"user_id": 1, "item_id": 9, "label": 1}'],
         "interactions.jsonl line 1: field 'item_id': unknown item id '9'"),
        ("interactions.jsonl", ['{"user_id": 1, "item_id": 1, "label": 1, "timestamp": 5}',
                                '{"user_id": 1, "item_id": 1, "label": 1}'],
         "interactions.jsonl line 2: field 'timestamp' is missing"),
        ("interactions.jsonl", ['{"user_id": 1, "item_id": 1, "label": 1, "timestamp": "noon"}'],
         "interactions.jsonl line 1: field 'timestamp' must be a number"),
        ("interactions.jsonl", ['{"user_id": 1, "item_id": 1, "label": 1, "split": "dev"}'],
         "interactions.jsonl line 1: field 'split' must be one of"),
        ("interactions.jsonl", [""], "interactions.jsonl: no interactions"),
    ],
)  # fmt: skip
def test_jsonl_malformed_files_raise_data_error(
    tmp_path: Path, file: str, lines: list[str], expected: str
) -> None:
    _write_jsonl(tmp_path / "items.jsonl", [{"item_id": 1, "text": "red shoes"}])
    _write_jsonl(tmp_path / "interactions.jsonl", [{"user_id": 1, "item_id": 1, "label": 1}])
    (tmp_path / file).write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as error:
        load_jsonl(tmp_path)
    assert expected in str(error.value)
    assert str(tmp_path / file) in str(error.value)


def test_jsonl_missing_files_and_bad_specs(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="dataset directory not found"):
        load_jsonl(tmp_path / "nope")
    _write_jsonl(tmp_path / "items.jsonl", ITEMS)
    with pytest.raises(DataError, match=r"missing interactions file: expected .*interactions\.jsonl"):
        load_jsonl(tmp_path)
    with pytest.raises(DataError, match="missing items file"):
        list(iter_items_jsonl(tmp_path / "other.jsonl"))
    with pytest.raises(DataError, match="unknown dataset spec 'movielens'"):
        load_dataset("movielens")


# ---------------------------------------------------------------- CLI


@pytest.mark.parametrize("kind", ["synthetic", "entities"])
def test_cli_synth_writes_a_reloadable_dataset_and_show_summarises_it(
    tmp_path: Path, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / kind
    assert marc_main(["data", "synth", "--kind", kind, "--out", str(out), "--items", "120", "--users", "50",
                      "--seed", "5"]) == 0  # fmt: skip
    assert (out / "items.jsonl").is_file() and (out / "interactions.jsonl").is_file()
    make = make_synthetic if kind == "synthetic" else make_entities
    _assert_same(load_dataset(f"jsonl:{out}"), make(num_items=120, num_users=50, seed=5))
    capsys.readouterr()
    assert marc_main(["data", "show", f"jsonl:{out}"]) == 0
    shown = capsys.readouterr().out
    assert f"dataset: {kind}" in shown and "items: 120" in shown and "positive rate" in shown
    assert "examples:" in shown and shown.count("\n  ") >= 3


def test_cli_show_reports_bad_data_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert marc_main(["data", "show", f"movielens:{tmp_path}"]) == 2
    assert "missing MovieLens movies file" in capsys.readouterr().err
