"""Scale-out: two ``edge collect`` processes on one MQTT 5 shared subscription and one PostgreSQL.

Fifty simulated counters (each a real outbox, link and uplink in this process) send chained
ratings through a private Mosquitto; the broker hands each message to one collector of the group.
One collector is killed with SIGKILL while the ratings flow and started again. What a commune
would check afterwards: every committed rating is stored exactly once, every device has its
acknowledgements (nothing pending), a batch delivered again is stored as nothing new and still
acknowledged, and every device's chain verifies whole although no collector saw all its events.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.config import BrokerAddress, SyncConfig
from edge.store import Outbox
from edge.sync import LinkSettings, MqttLink, Uplink
from edge.topics import Topics
from sim.broker import MosquittoBroker
from sim.harness import EdgeProcess, wait_for
from tests.pg_fixtures import postgres_server, postgres_url  # noqa: F401 (fixtures)
from tests.report_fixtures import wire_batches
from tests.test_storage import query, stored_ids

COMMUNE = "gia-ray"
DEVICES = 50
#: Ratings per counter.
PER_DEVICE = 30
TOTAL = DEVICES * PER_DEVICE
WAIT = 240.0

pytestmark = pytest.mark.slow


def rating(i: int) -> dict[str, Any]:
    score = 1 + i % 4
    label = {4: "very_satisfied", 3: "satisfied", 2: "neutral", 1: "dissatisfied"}[score]
    return {"counter": "q1", "officer": "nv-07", "score": score, "label": label, "misuse": None, "n": i}


class Counter:
    """One simulated counter: its outbox, its link to the broker and its uplink."""

    def __init__(self, tmp_path: Path, broker: MosquittoBroker, name: str) -> None:
        self.name = name
        self.outbox = Outbox(tmp_path / "devices" / name / "events.db")
        self.link = MqttLink(LinkSettings(address=BrokerAddress.parse(broker.url), client_id=name, reconnect_min_s=0.1))
        self.uplink = Uplink(self.outbox, self.link, Topics("vn", COMMUNE, name), SyncConfig(ack_timeout_s=2))
        self.ids: list[str] = []

    def start(self) -> None:
        self.uplink.start()
        self.link.start()

    def rate(self, count: int) -> None:
        for _ in range(count):
            self.ids.append(self.outbox.append("rating", rating(len(self.ids))).id)

    def stop(self) -> None:
        self.uplink.stop()
        self.link.stop()
        self.outbox.close()


def feed(fleet: list[Counter], total: int) -> None:
    """Commit ``total`` ratings across the fleet, a round of one per counter every 20 ms."""
    while sum(len(c.ids) for c in fleet) < total:
        for c in fleet:
            c.rate(1)
        time.sleep(0.02)


def collector(tmp_path: Path, broker: MosquittoBroker, db: str, name: str) -> EdgeProcess:
    args = ["collect", "--broker", broker.url, "--db", db, "--commune", COMMUNE, "--share", "pool"]
    return EdgeProcess([*args, "--client-id", name, "--summary-interval", "0"], tmp_path / f"{name}.log")


@pytest.fixture
def fleet(tmp_path: Path, broker: MosquittoBroker) -> Iterator[list[Counter]]:
    counters = [Counter(tmp_path, broker, f"counter-{i:02d}") for i in range(DEVICES)]
    try:
        yield counters
    finally:
        for c in counters:
            c.stop()


def test_two_collectors_on_a_shared_subscription_store_every_event_once_through_a_kill(
    tmp_path: Path,
    broker: MosquittoBroker,
    postgres_url: str,  # noqa: F811
    fleet: list[Counter],
) -> None:
    a = collector(tmp_path, broker, postgres_url, "collect-a").start()
    b = collector(tmp_path, broker, postgres_url, "collect-b").start()
    for c in fleet:
        c.start()
    assert wait_for(lambda: all(c.link.connected.is_set() for c in fleet), 60.0), "the fleet never connected"

    # The fleet keeps rating (one rating per counter in turn) while a collector is killed and
    # started again.
    feeding = threading.Thread(target=feed, args=(fleet, TOTAL), name="feed")
    feeding.start()
    try:
        assert wait_for(lambda: len(stored_ids(postgres_url)) >= TOTAL // 3, WAIT)
        a.kill()  # SIGKILL while ratings are being stored and acknowledged
        # The other takes it all; its killed peer's will said the server is offline, and the devices
        # go on only because the one left says online again.
        assert wait_for(lambda: len(stored_ids(postgres_url)) >= 2 * TOTAL // 3, WAIT)
        a = collector(tmp_path, broker, postgres_url, "collect-a").start()
    finally:
        feeding.join()

    committed = {i for c in fleet for i in c.ids}
    assert len(committed) == TOTAL
    assert wait_for(lambda: stored_ids(postgres_url) == committed, WAIT), "not every rating was stored"
    assert wait_for(lambda: all(c.outbox.stats().depth == 0 for c in fleet), WAIT), "some device kept events pending"

    # A batch delivered again (its device never got the evtack, or the broker redelivered it to
    # the other collector): nothing new is stored, and the device is told it is stored.
    first = fleet[0]
    replay = wire_batches(COMMUNE, first.name, first.outbox.epoch, first.outbox.list_events(type="rating", limit=5))
    acks: list[dict[str, Any]] = []
    got = threading.Event()

    def on_evtack(_topic: str, payload: bytes) -> None:
        acks.append(json.loads(payload))
        got.set()

    watcher = MqttLink(LinkSettings(address=BrokerAddress.parse(broker.url), client_id="watcher"))
    watcher.subscribe(f"vn/{COMMUNE}/dev/{first.name}/evtack", on_evtack)
    watcher.start()
    try:
        assert watcher.wait_connected(30)
        # Sent until an evtack is seen: the watcher's subscription may still be on its way.
        for _ in range(30):
            for payload in replay:
                first.link.publish(f"vn/{COMMUNE}/dev/{first.name}/evt/rating", payload, qos=1).result(30)
            if got.wait(2):
                break
        assert got.is_set(), "the replayed batch was never acknowledged"
    finally:
        watcher.stop()
    newest = sorted(e.seq for e in first.outbox.list_events(type="rating", limit=5))
    assert [newest[0], newest[-1]] in [r for ack in acks for r in ack["ranges"]]

    summaries = [json.loads(p.stop().strip().splitlines()[-1]) for p in (a, b)]
    # Exactly once: every id once (the primary key) and no id that was not committed.
    rows = query(postgres_url, "SELECT count(*), count(DISTINCT id) FROM events")
    assert rows == [(len(committed), len(committed))]
    assert sum(s["duplicates"] for s in summaries) >= len(replay[0].split(b'"seq":')) - 1
    assert all(s["stored"] > 0 for s in summaries), "the restarted collector took no share of the load"
    # Each device's chain, verified piecewise by two collectors, is whole.
    chains = query(postgres_url, "SELECT device, events, verified, whole FROM chains ORDER BY device")
    assert chains == [(c.name, PER_DEVICE, PER_DEVICE, 1) for c in fleet]
