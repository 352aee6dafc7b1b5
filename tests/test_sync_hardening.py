"""The sync path under the failures a careful reading found: poison batches, dying threads, the paho
boundary across reconnects, and bounded memory.

Each test arranges the real parts (Mosquitto, the daemon or its pieces, the collector, SQLite), makes
the failure happen, and checks what a technician or the commune server would see.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.store import Outbox
from sim.broker import MosquittoBroker
from sim.harness import EdgeProcess, collector_rows, daemon_link, run_edge, wait_for, write_device_config
from tests.conftest import FAST_SYNC, Device

BIG = {"blob": "x" * 100_000}


# -- set-up ---------------------------------------------------------------------------------------


def make_device(tmp_path: Path, broker: MosquittoBroker, name: str = "counter-01") -> Device:
    state = tmp_path / f"state-{name}"
    config = write_device_config(tmp_path / f"{name}.toml", broker.url, device=name, state_dir=state)
    return Device(config, state, {"EDGE_CONFIG": str(config), **FAST_SYNC}, tmp_path / f"{name}.log")


def collector_process(tmp_path: Path, broker: MosquittoBroker, *extra: str) -> tuple[Path, EdgeProcess]:
    db = tmp_path / "collector.db"
    args = ["collect", "--broker", broker.url, "--db", str(db), "--commune", "gia-ray", "--summary-interval", "0"]
    return db, EdgeProcess([*args, *extra], tmp_path / "collector.log")


def start_connected(device: Device) -> EdgeProcess:
    daemon = device.daemon().start()
    assert daemon.proc is not None
    assert wait_for(lambda: daemon_link(device.db, daemon.proc.pid) == "up", timeout=30), device.log.read_text()
    return daemon


def stored_ids(db: Path, event_type: str = "test") -> set[str]:
    return {r[0] for r in collector_rows(db, "SELECT id FROM events WHERE type = ?", (event_type,))}


def status(device: Device) -> dict:
    return json.loads(run_edge(["status", "--json"], env=device.env).stdout)


@pytest.fixture
def packet_limited_broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A broker that disconnects any client sending a packet over 64 KiB (and says so in CONNACK)."""
    b = MosquittoBroker(tmp_path / "broker", max_packet_size=65536).start()
    try:
        yield b
    finally:
        b.stop()


# -- 1. poison batches ----------------------------------------------------------------------------


def test_an_oversized_event_already_stored_is_set_aside_and_the_twenty_after_it_arrive(
    tmp_path: Path, packet_limited_broker: MosquittoBroker
) -> None:
    device = make_device(tmp_path, packet_limited_broker)
    db, collector = collector_process(tmp_path, packet_limited_broker)
    collector.start()
    daemon = start_connected(device)
    try:
        # Written as an older release (without the size cap at append) would have: the event is on
        # disk, and no broker of this commune will ever take it.
        with Outbox(device.db, max_event_bytes=1 << 20) as outbox:
            big = outbox.append("test", BIG)
        small = run_edge(["emit", "test", "--count", "20"], env=device.env).stdout.split()
        assert len(small) == 20
        assert wait_for(lambda: stored_ids(db) >= set(small), timeout=60), (
            f"{len(stored_ids(db) & set(small))} of 20 arrived"
        )
        report = status(device)
        aside = {u["id"]: u for u in report["undeliverable"]}
        assert big.id in aside, report
        assert aside[big.id]["seq"] == big.seq
        assert "too large" in aside[big.id]["reason"]
        assert report["queue"]["depth"] == 0
    finally:
        daemon.stop()
        collector.stop()
    assert big.id not in stored_ids(db)
