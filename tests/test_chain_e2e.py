"""The chain end to end: the real daemon, a private Mosquitto and the real collector.

A chain must verify whole across everything a device lives through (a kill -9, a restart, a store
quarantined and started again under a new epoch), and show what was done to it: a rating deleted
from the device's store before it was sent, or one dropped on the way.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from datetime import datetime
from pathlib import Path

import paho.mqtt.client as mqtt

from edge.server.db import VIETNAM
from edge.store import Outbox
from sim.harness import EdgeProcess, collector_rows, daemon_link, run_edge, wait_for
from tests.report_fixtures import wire_batches

WAIT = 60.0


def start_connected(device) -> EdgeProcess:
    daemon = device.daemon().start()
    assert daemon.proc is not None
    assert wait_for(lambda: daemon_link(device.db, daemon.proc.pid) == "up", timeout=WAIT), "daemon never connected"
    return daemon


def emit_ratings(device, count: int, score: int = 4) -> list[str]:
    data = {"counter": "q1", "officer": "nv-07", "score": score, "label": "very_satisfied", "misuse": None}
    out = run_edge(["emit", "rating", "--count", str(count), "--data", json.dumps(data)], env=device.env).stdout
    return out.split()


def stored_ratings(db: Path) -> int:
    return len(collector_rows(db, "SELECT id FROM events WHERE type = 'rating'"))


def verify(db: Path) -> tuple[int, list[dict], str]:
    as_json = run_edge(["verify", "--db", str(db), "--json"], check=False)
    text = run_edge(["verify", "--db", str(db)], check=False)
    assert as_json.returncode == text.returncode
    return as_json.returncode, json.loads(as_json.stdout), text.stdout


def this_month() -> str:
    return datetime.now(VIETNAM).strftime("%Y-%m")


def spoil_index(db: Path, index: str) -> None:
    """Overwrite the root page of one of the store's indexes: the file fails its check at start,
    while every event row is still readable (as after a torn write to an index page)."""
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (index,)).fetchone()[0]
    size = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    raw = bytearray(db.read_bytes())
    raw[(page - 1) * size : page * size] = b"\xa5" * size
    db.write_bytes(bytes(raw))


def test_a_chain_verifies_whole_across_a_kill_a_restart_and_a_quarantined_store(device, collector) -> None:
    collector.start()
    daemon = start_connected(device)
    ids = emit_ratings(device, 5)
    assert wait_for(lambda: stored_ratings(collector.db) == 5, WAIT)
    daemon.kill()  # kill -9: the chain head is in the store, committed with each rating
    ids += emit_ratings(device, 3, score=3)  # while the daemon is down
    daemon = start_connected(device)
    assert wait_for(lambda: stored_ratings(collector.db) == 8, WAIT)

    # The collector goes away; four more ratings wait on the device when its card is damaged.
    collector.stop()
    ids += emit_ratings(device, 4, score=2)
    daemon.stop()
    with Outbox.open_readonly(device.db) as outbox:
        old_epoch = outbox.epoch
        assert len(outbox.pending(limit=100)) >= 4
    spoil_index(device.db, "events_acked")

    daemon = start_connected(device)  # moves the store aside, salvages, starts a new epoch
    collector.start()
    ids += emit_ratings(device, 3, score=1)
    assert wait_for(lambda: stored_ratings(collector.db) == 15, WAIT)
    assert wait_for(
        lambda: collector_rows(
            collector.db,
            "SELECT 1 FROM events WHERE type = 'security' AND json_extract(data, '$.kind') = 'store_quarantined'",
        ),
        WAIT,
    )
    daemon.stop()
    assert sorted(r[0] for r in collector_rows(collector.db, "SELECT id FROM events WHERE type = 'rating'")) == sorted(
        ids
    )
    (new_epoch,) = [
        r[0] for r in collector_rows(collector.db, "SELECT DISTINCT epoch FROM events WHERE epoch != ?", (old_epoch,))
    ]
    # Those of the four that arrived as the salvaged copies were stored under the new epoch.
    carried = collector_rows(
        collector.db,
        "SELECT count(*) FROM events WHERE type = 'rating' AND epoch = ? AND json_extract(data, '$.chain.epoch') = ?",
        (new_epoch, old_epoch),
    )[0][0]

    code, chains, text = verify(collector.db)
    assert code == 0, text
    by_epoch = {c["epoch"]: c for c in chains}
    assert set(by_epoch) == {old_epoch, new_epoch}
    old, new = by_epoch[old_epoch], by_epoch[new_epoch]
    assert old["whole"] and (old["events"], old["length"], old["verified"], old["sealed"]) == (12, 12, 12, 12)
    assert old["carried"] == carried
    assert new["whole"] and (new["events"], new["length"], new["verified"]) == (3, 3, 3)
    assert f"gia-ray/counter-01  epoch {old_epoch}  whole: 12 events" in text

    report = json.loads(run_edge(["report", "--db", str(collector.db), "--month", this_month(), "--json"]).stdout)
    assert report["chains_whole"] and {c["epoch"] for c in report["chains"]} == {old_epoch, new_epoch}


def test_a_rating_deleted_on_the_device_before_it_was_sent_is_named(device, collector, tmp_path: Path) -> None:
    emit_ratings(device, 6)
    conn = sqlite3.connect(device.db)
    with conn:
        (seq,) = conn.execute("SELECT seq FROM events WHERE json_extract(data, '$.chain.n') = 3").fetchone()
        conn.execute("DELETE FROM events WHERE seq = ?", (seq,))
    conn.close()
    collector.start()
    daemon = start_connected(device)
    assert wait_for(lambda: stored_ratings(collector.db) == 5, WAIT)
    daemon.stop()

    code, chains, text = verify(collector.db)
    assert code == 1
    (chain,) = chains
    assert [(b["kind"], b["n"]) for b in chain["breaks"]] == [("missing", 3)]
    assert re.search(r"BROKEN \(1 break\): 5 events, n=1\.\.6, verified 1\.\.2", text), text
    assert re.search(r"missing +n=3 not received \(after seq \d+, before seq \d+\)", text), text

    html = tmp_path / "report.html"
    report = json.loads(
        run_edge(["report", "--db", str(collector.db), "--month", this_month(), "--html", str(html), "--json"]).stdout
    )
    assert not report["chains_whole"]
    assert [(b["kind"], b["n"]) for b in report["chains"][0]["breaks"]] == [("missing", 3)]
    page = html.read_text(encoding="utf-8")
    assert 'data-kind="missing" data-n="3"' in page
    assert "Không nhận được sự kiện số 3" in page


def test_a_rating_dropped_in_transit_is_named(broker, collector, tmp_path: Path) -> None:
    collector.start()
    with Outbox(tmp_path / "device" / "events.db") as outbox:
        for score in (4, 3, 4, 1, 2, 4, 3, 4):
            outbox.append("rating", {"counter": "q1", "officer": "nv-07", "score": score, "misuse": None})
        events = outbox.pending(limit=100)
        epoch = outbox.epoch
    lost = events[3]
    # The batches as the device would send them, one at a time, the fourth rating lost on the way.
    payloads = [p for e in events if e is not lost for p in wire_batches("gia-ray", "counter-01", epoch, [e])]
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="counter-01", protocol=mqtt.MQTTv5)
    online = threading.Event()

    def on_status(_client: mqtt.Client, _userdata: object, msg: mqtt.MQTTMessage) -> None:
        if json.loads(msg.payload).get("online"):
            online.set()

    client.on_message = on_status
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        # Sent only once the collector says it is there (retained), as a device does.
        client.subscribe("vn/gia-ray/server/status", qos=1)
        assert online.wait(WAIT), "the collector never came online"
        for payload in payloads:
            client.publish("vn/gia-ray/dev/counter-01/evt/rating", payload, qos=1).wait_for_publish(10)
        assert wait_for(lambda: stored_ratings(collector.db) == 7, WAIT)
    finally:
        client.loop_stop()
        client.disconnect()
    code, chains, text = verify(collector.db)
    assert code == 1
    (chain,) = chains
    assert [(b["kind"], b["n"]) for b in chain["breaks"]] == [("missing", 4)]
    assert f"missing    n=4 not received (after seq {events[2].seq}, before seq {events[4].seq})" in text
