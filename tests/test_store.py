"""The outbox on its own: durable appends, seq never reused, dedupe, the byte cap, quarantine."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from edge.store import NewEvent, Outbox
from sim.harness import run_edge


def test_append_is_on_disk_when_it_returns(tmp_path: Path) -> None:
    with Outbox(tmp_path / "events.db") as outbox:
        committed = outbox.append("rating", {"score": 4})
        # Another connection, as another process would, sees the row at once.
        conn = sqlite3.connect(tmp_path / "events.db")
        row = conn.execute("SELECT id, type, priority FROM events WHERE seq = ?", (committed.seq,)).fetchone()
        conn.close()
    assert row == (committed.id, "rating", 0)  # ratings are critical by default


def test_seq_is_never_reused_and_epoch_persists(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    with Outbox(db) as outbox:
        epoch = outbox.epoch
        seqs = [outbox.append("test", {"n": i}).seq for i in range(5)]
        outbox.mark_acked([(1, 5)])
        outbox.keep_acked_s = 0
        outbox.housekeeping()  # forgets the acknowledged rows
        assert outbox.list_events() == []
    with Outbox(db) as outbox:
        assert outbox.epoch == epoch
        assert outbox.append("test", {}).seq == max(seqs) + 1
    assert seqs == [1, 2, 3, 4, 5]


def test_dedupe_key_commits_a_repeated_press_once(tmp_path: Path) -> None:
    with Outbox(tmp_path / "events.db") as outbox:
        first = outbox.append("rating", {"score": 4}, dedupe_key="panel:1:17:90210")
        again = outbox.append("rating", {"score": 4}, dedupe_key="panel:1:17:90210")
        assert again == type(first)(first.id, first.seq, duplicate=True)
        assert outbox.stats().depth == 1


def test_pending_acked_and_ranges(tmp_path: Path) -> None:
    with Outbox(tmp_path / "events.db") as outbox:
        outbox.append_many([NewEvent("test", {"n": i}) for i in range(10)])
        assert outbox.mark_acked([(2, 4), (7, 7)]) == 4
        assert [e.seq for e in outbox.pending()] == [1, 5, 6, 8, 9, 10]
        assert outbox.mark_acked([(2, 4)]) == 0  # a repeated ack changes nothing
        wire = json.loads(outbox.pending(limit=1)[0].wire_json())
        assert wire["seq"] == 1 and wire["data"] == {"n": 0} and wire["priority"] == "normal"


def test_cap_evicts_bulk_first_and_never_critical(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    cap = 1024 * 1024
    with Outbox(db, max_bytes=cap) as outbox:
        ratings = [outbox.append("rating", {"score": 4, "n": i}).id for i in range(300)]
        panel = [outbox.append("panel", {"state": "connected", "n": i}).id for i in range(200)]
        for _ in range(40):
            outbox.append_many([NewEvent("health", {"pad": "x" * 400}) for _ in range(200)])
        outbox.enforce_cap()
        stats = outbox.stats()
        kept = {e.id for e in outbox.list_events(limit=100_000)}
    assert set(ratings) <= kept, "a critical event was evicted"
    assert set(panel) <= kept, "normal events went before bulk ones"
    assert stats.evictions["bulk"] > 0 and stats.evictions["normal"] == 0
    assert stats.db_bytes <= cap


def test_cap_evicts_normal_after_bulk_is_gone(tmp_path: Path) -> None:
    with Outbox(tmp_path / "events.db", max_bytes=512 * 1024) as outbox:
        ratings = [outbox.append("rating", {"n": i}).id for i in range(100)]
        for _ in range(30):
            outbox.append_many([NewEvent("panel", {"pad": "y" * 400}) for _ in range(100)])
        outbox.enforce_cap()
        stats = outbox.stats()
        kept = {e.id for e in outbox.list_events(limit=100_000)}
    assert set(ratings) <= kept
    assert stats.evictions["normal"] > 0
    assert stats.depth_by_priority["critical"] == 100


def test_status_shows_evictions(tmp_path: Path, device) -> None:
    env = {**device.env, "EDGE_STORE__MAX_BYTES": str(512 * 1024)}
    run_edge(["emit", "rating", "--data", '{"score": 1}', "--count", "20"], env=env)
    run_edge(["emit", "health", "--data", json.dumps({"pad": "z" * 2000}), "--count", "600"], env=env)
    report = json.loads(run_edge(["status", "--json"], env=env).stdout)
    assert report["evictions"]["bulk"] > 0
    assert report["queue"]["by_priority"]["critical"] == 20
    human = run_edge(["status"], env=env).stdout
    assert "evictions   bulk" in human


def test_corrupt_database_is_quarantined_not_deleted(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    with Outbox(db) as outbox:
        old_epoch = outbox.epoch
        outbox.append("rating", {"score": 3})
    garbage = b"this is not a database" * 500
    db.write_bytes(garbage)
    with Outbox(db, owner=True) as outbox:
        assert outbox.quarantined is not None
        assert outbox.quarantined.read_bytes() == garbage  # moved aside, never deleted
        assert outbox.epoch != old_epoch
        events = outbox.list_events(type="security")
        assert events and events[0].data["kind"] == "store_quarantined"
        assert (events[0].data["readable"], events[0].data["recovered"]) == (False, 0)  # nothing in it to read
        assert outbox.counters()["quarantines"] == 1
        assert outbox.integrity_check() == "ok"
