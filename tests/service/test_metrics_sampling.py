"""Gauges sampled in multiprocess mode (`marc serve --workers N`) hold the function they are read from:
a reload's new batcher replaces the old one's, and a removed model's goes, so no retired model is kept
alive by its sampler (it was: each swap of a real model kept ~230 MiB per worker, seen in the soak)."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import pytest

from service.metrics import MULTIPROC_DIR_VARIABLE, Metrics


class Batcher:
    def __init__(self, depth: int) -> None:
        self.queued_items = depth


@pytest.mark.filterwarnings("ignore:Removal of labels")  # prometheus-client, on forget_model
def test_a_reload_lets_the_retired_batcher_go(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(MULTIPROC_DIR_VARIABLE, str(tmp_path))
    metrics = Metrics()
    assert metrics.multiprocess
    old, new = Batcher(3), Batcher(5)
    old_gone, new_gone = weakref.ref(old), weakref.ref(new)
    for batcher in (old, new):  # a swap: the new model's batcher samples the same gauge
        model = metrics.for_model("m")
        model.sample(model.queue_depth, lambda b=batcher: b.queued_items)  # type: ignore[misc]
    del old, new, batcher
    gc.collect()
    assert old_gone() is None and new_gone() is not None
    metrics.refresh()
    assert metrics.queue_depth.labels(model="m")._value.get() == 5  # the new batcher's depth
    metrics.forget_model("m")  # no longer served: its sampler goes too
    gc.collect()
    assert new_gone() is None
