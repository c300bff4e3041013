"""Metrics really scraped: a real Prometheus server scrapes a running `marc serve` (one worker, and
`--workers 2`: prometheus-client's multiprocess mode) with the shipped rules (deploy/prometheus/rules.yml,
windows shortened to seconds). Over live traffic the recording rules give the hit ratio the clients saw,
a p99 per route, the queue depth and the overload ratio; forced overload fires MarcOverloaded, which
clears once the overload stops."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import httpx
import pytest

from tests.support.load import ClientThreads, post_all
from tests.support.prometheus import PrometheusServer, prometheus_binary, shortened_rules
from tests.support.reliability_report import record
from tests.support.servers import ServeProcess

QUEUE_LIMIT = 16
HOT_TEXTS = ("oak table", "red lamp", "blue sofa")
EMBEDDING_ROUTES = ("/v1/embed", "/v1/embeddings")
# Rate windows and alert holds of rules.yml (1m, minutes) on the test's scale: Prometheus scrapes and
# evaluates every second, so a 5 s window holds 5 samples.
WINDOW, HOLD = "5s", "1s"


class Traffic(ClientThreads):
    """Clients sending, one after another, 3 requests for hot texts and 1 for a new text (a 75% hit
    ratio once the hot texts are cached), on /v1/embed and /v1/embeddings in turn; they count the items
    answered from the cache and in all."""

    def __init__(self, url: str, clients: int = 2) -> None:
        self.url = url
        self.cached = self.items = 0
        super().__init__(clients)

    def _run(self, index: int) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            sent = 0
            while not self._stop.is_set():
                text = HOT_TEXTS[sent % 4] if sent % 4 < 3 else f"client {index} new text {sent}"
                if sent % 2:
                    answer = client.post("/v1/embeddings", json={"input": [text]})
                else:
                    answer = client.post("/v1/embed", json={"items": [{"text": text}]})
                sent += 1
                if answer.status_code == 503:  # refused while the test forces overload
                    continue
                answer.raise_for_status()
                with self._lock:
                    self.cached += int(answer.headers["x-cache-hits"])
                    self.items += 1

    def hit_ratio(self) -> float:
        with self._lock:
            return self.cached / self.items


def _overload(url: str, round_: int) -> None:
    """A burst of 8-item requests of new texts, 64 at once, against a queue of 16 items."""
    bodies = [{"items": [{"text": f"overload {round_}-{r}-{i}"} for i in range(8)]} for r in range(96)]
    asyncio.run(post_all(url, "/v1/embed", bodies, concurrency=64))


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_rules_over_live_traffic_and_the_overload_alert(
    tiny_artifact: Path, tmp_path: Path, workers: int
) -> None:
    binary = prometheus_binary()
    if binary is None:
        pytest.skip(
            "prometheus not found (`make prometheus-tools` fetches it from Debian's prometheus package)"
        )
    server = ServeProcess(
        tmp_path / "serve.log", artifact=tiny_artifact, max_queue_items=QUEUE_LIMIT, workers=workers
    )
    with server, Traffic(server.url) as traffic:
        target = server.url.removeprefix("http://")
        with PrometheusServer(binary, tmp_path, [target], shortened_rules(WINDOW, HOLD)) as prometheus:
            # Live traffic, no overload: every recording rule has a value, and the values make sense.
            prometheus.wait_for("the target up", lambda: prometheus.query('up{job="marc"} == 1'), 30)

            def embedding_p99() -> dict[str, float]:
                found = {
                    labels["route"]: value
                    for labels, value in prometheus.query("marc:request_duration_seconds:p99_rate1m")
                    if labels["route"] in EMBEDDING_ROUTES and value == value  # NaN: no request in the window
                }
                return found if len(found) == len(EMBEDDING_ROUTES) else {}

            p99 = prometheus.wait_for("a p99 of both embedding routes", embedding_p99, 30)
            [(_, hit_ratio)] = prometheus.query("marc:cache_hit_ratio:rate1m")
            clients_hit_ratio = traffic.hit_ratio()
            [(_, calm_overload)] = prometheus.query("marc:overload_ratio:rate1m")
            [(_, calm_depth)] = prometheus.query("max_over_time(marc:queue_depth:sum[10s])")
            calm_alerts = prometheus.alerts("MarcOverloaded")

            # Forced overload: bursts until the alert fires.
            stop = threading.Event()

            def overload() -> None:
                round_ = 0
                while not stop.is_set():
                    _overload(server.url, round_)
                    round_ += 1

            burster = threading.Thread(target=overload, daemon=True)
            burster.start()
            try:
                firing = prometheus.wait_for(
                    "MarcOverloaded firing",
                    lambda: [a for a in prometheus.alerts("MarcOverloaded") if a["state"] == "firing"],
                    60,
                )
                [(_, overload_ratio)] = prometheus.query("marc:overload_ratio:rate1m")
                [(depth_labels, busy_depth)] = prometheus.query("max_over_time(marc:queue_depth:sum[10s])")
            finally:
                stop.set()
                burster.join(60)
            # The overload stopped, the traffic goes on: the alert clears.
            prometheus.wait_for("MarcOverloaded cleared", lambda: not prometheus.alerts("MarcOverloaded"), 60)
            [(_, after_overload)] = prometheus.query("marc:overload_ratio:rate1m")

    record(
        f"prometheus_{workers}_workers",
        hit_ratio_prometheus=hit_ratio,
        hit_ratio_clients=clients_hit_ratio,
        p99_s=p99,
        overload_ratio_calm=calm_overload,
        overload_ratio_forced=overload_ratio,
        overload_ratio_after=after_overload,
        queue_depth_max_forced=busy_depth,
        alert_firing_summary=firing[0]["annotations"]["summary"],
    )
    # Prometheus' ratio is over the last 5 s, the clients' over the whole run (both tend to 75%).
    assert abs(hit_ratio - clients_hit_ratio) < 0.15, (hit_ratio, clients_hit_ratio)
    assert all(0 < value <= 10 for value in p99.values()), p99  # within the histogram's buckets
    assert calm_overload == 0 and calm_depth <= QUEUE_LIMIT * workers and not calm_alerts
    assert overload_ratio > 0.05, overload_ratio  # the alert's threshold
    # Per served model, never above the limit. (The tiny model drains its queue within milliseconds: a
    # scrape, answered by the same event loop between requests, mostly finds it empty.)
    assert depth_labels == {"model": "tiny-artifact"} and 0 <= busy_depth <= QUEUE_LIMIT * workers
    assert after_overload <= 0.05, after_overload  # below the threshold again
