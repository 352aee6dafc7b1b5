"""The rating chain on the device, and what verification makes of a chain that was tampered with.

Device side: each rating and proof of play is linked by the outbox as it is committed; the links
are checked here with the recipe the README gives a district (SHA-256 of the sorted, compact JSON
of id, seq, type, ts and data), not with the project's own code. Server side: real outboxes,
delivered as the collector stores them, then a rating deleted on the device before it was sent,
altered on the device or at the collector, reordered, or forged beside a real one; each must be
named by ``edge verify`` and on the report, with the collector's database in SQLite and in PostgreSQL.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.exceptions import EventTooLarge
from edge.messages import EventBatch, parse
from edge.server.browse import metadata
from edge.server.chain import ChainVerifier
from edge.server.collector import CollectorStore
from edge.server.db import open_db
from edge.server.storage import open_storage
from edge.store import NewEvent, Outbox
from sim.harness import edge_command, run_edge, write_device_config
from tests.pg_fixtures import postgres_server, postgres_url  # noqa: F401 (fixtures)
from tests.report_fixtures import deliver, store_batches, wire_batches

ZEROS = "0" * 64


def digest(event: dict[str, Any]) -> str:
    """The README's recipe, written out here on purpose."""
    canon = json.dumps(
        {k: event[k] for k in ("id", "seq", "type", "ts", "data")},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()


def stored(db: Path, types: tuple[str, ...] = ("rating", "broadcast")) -> list[dict[str, Any]]:
    """The device's chained events straight from its file, in seq order."""
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute(
            f"SELECT id, seq, type, ts, data FROM events WHERE type IN ({','.join('?' * len(types))}) ORDER BY seq",
            types,
        ).fetchall()
    finally:
        conn.close()
    return [{"id": r[0], "seq": r[1], "type": r[2], "ts": r[3], "data": json.loads(r[4])} for r in rows]


def assert_linked(events: list[dict[str, Any]], epoch: str) -> None:
    prev = ZEROS
    for n, event in enumerate(events, start=1):
        assert event["data"]["chain"] == {"epoch": epoch, "n": n, "prev": prev}, event
        prev = digest(event)


def rating(score: int, **extra: Any) -> dict[str, Any]:
    label = {4: "very_satisfied", 3: "satisfied", 2: "neutral", 1: "dissatisfied"}[score]
    return {"counter": "q1", "officer": "nv-07", "score": score, "label": label, "misuse": None, **extra}


# -- on the device ---------------------------------------------------------------------------------


def test_ratings_and_proof_of_play_are_linked_as_they_are_committed(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    with Outbox(db) as outbox:
        outbox.append("rating", rating(4, text="Rất hài lòng"))
        outbox.append("health", {"uptime_s": 5})
        outbox.append(
            "broadcast", {"broadcast_id": "b-1", "state": "finished", "duration_s": 12.125, "level_dbfs": -18.5}
        )
        outbox.append_many([NewEvent("rating", rating(s)) for s in (3, 2, 1)] + [NewEvent("test", {"probe": 1})])
        # A repeated press (same dedupe key) is one rating, and takes no second place in the chain.
        first = outbox.append("rating", rating(4), dedupe_key="press-9")
        again = outbox.append("rating", rating(4), dedupe_key="press-9")
        assert again.duplicate and again.id == first.id
        epoch = outbox.epoch
        head = json.loads(outbox.get_meta("chain") or "{}")
    chained = stored(db)
    assert [e["type"] for e in chained] == ["rating", "broadcast", "rating", "rating", "rating", "rating"]
    assert_linked(chained, epoch)
    # The head in meta is the last link, so the next event can be linked after any restart.
    assert head == {"epoch": epoch, "n": 6, "digest": digest(chained[-1])}
    # Other types carry no chain.
    assert all("chain" not in e["data"] for e in stored(db, ("health", "test")))


def test_the_chain_runs_on_across_restarts_and_two_writing_processes(tmp_path: Path) -> None:
    state = tmp_path / "state"
    config = tmp_path / "edge.toml"
    write_device_config(config, "mqtt://127.0.0.1:1", state_dir=state)
    env = {"EDGE_CONFIG": str(config)}
    db = state / "events.db"
    with Outbox(db) as outbox:
        outbox.append("rating", rating(4))
    # `edge emit` (another process) and this process append at the same time.
    emit = subprocess.Popen(
        [*edge_command(), "emit", "rating", "--count", "40", "--data", json.dumps(rating(3))],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )
    with Outbox(db) as outbox:
        for _ in range(40):
            outbox.append("rating", rating(2))
        epoch = outbox.epoch
    out, _ = emit.communicate(timeout=120)
    assert emit.returncode == 0 and len(out.split()) == 40
    with Outbox(db) as outbox:  # and once more after both have gone
        outbox.append("rating", rating(1))
    chained = stored(db)
    assert len(chained) == 82
    assert_linked(chained, epoch)


def test_a_group_commit_rolled_back_leaves_no_hole_in_the_chain(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    with Outbox(db) as outbox:
        errors: list[BaseException] = []

        def fails(conn: sqlite3.Connection) -> None:
            raise RuntimeError("the service's own row could not be written")

        def good(i: int) -> None:
            outbox.append("rating", rating(1 + i % 4))

        def bad() -> None:
            try:
                outbox.append_many([NewEvent("rating", rating(4))], also=fails)
            except RuntimeError as exc:
                errors.append(exc)

        threads = [threading.Thread(target=good, args=(i,)) for i in range(30)]
        threads += [threading.Thread(target=bad) for _ in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        epoch = outbox.epoch
    assert len(errors) == 5
    chained = stored(db)
    assert len(chained) == 30
    assert_linked(chained, epoch)


def test_a_caller_cannot_write_the_chain_and_a_chained_event_keeps_room_for_it(tmp_path: Path) -> None:
    with Outbox(tmp_path / "events.db", max_event_bytes=2000) as outbox:
        outbox.append("rating", {**rating(4), "chain": {"epoch": "feed", "n": 99, "prev": "f" * 64}})
        (event,) = stored(tmp_path / "events.db")
        assert event["data"]["chain"] == {"epoch": outbox.epoch, "n": 1, "prev": ZEROS}
        # A rating that would fit without its link does not fit with it: refused at append.
        with pytest.raises(EventTooLarge):
            outbox.append("rating", {"note": "x" * 1850})
        outbox.append("test", {"note": "x" * 1850})  # unchained: fits


def test_an_unreadable_chain_head_never_stops_a_rating(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    with Outbox(db) as outbox:
        for s in (4, 3, 2):
            outbox.append("rating", rating(s))
        outbox.append("health", {"uptime_s": 1})
        epoch = outbox.epoch
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE meta SET value = 'not json' WHERE key = 'chain'")
    conn.close()
    with Outbox(db) as outbox:
        outbox.append("rating", rating(1))  # committed, and linked after the newest chained event
    assert_linked(stored(db), epoch)


def test_a_store_moved_to_another_machine_starts_a_new_chain_and_seals_the_old(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    with Outbox(db, owner=True, machine_id="pi-a", device_id="counter-01") as outbox:
        for s in (4, 3, 2):
            outbox.append("rating", rating(s))
        old_epoch = outbox.epoch
    old = stored(db)
    with Outbox(db, owner=True, machine_id="pi-b", device_id="counter-01") as outbox:
        outbox.append("rating", rating(1))
        new_epoch = outbox.epoch
        (moved,) = [e.data for e in outbox.list_events(type="security")]
    assert new_epoch != old_epoch
    assert moved["old_chain"] == {"epoch": old_epoch, "n": 3, "digest": digest(old[-1])}
    after = stored(db)
    assert after[:3] == old  # the old events keep their links
    assert after[3]["data"]["chain"] == {"epoch": new_epoch, "n": 1, "prev": ZEROS}


def _spoil_page_holding(db: Path, needle: bytes) -> set[int]:
    """Overwrite the 4 KiB page that holds ``needle``; returns the presses (``"press":N``) it held."""
    raw = bytearray(db.read_bytes())
    page = raw.index(needle) // 4096
    spoiled = {int(n) for n in re.findall(rb'"press":(\d+),', bytes(raw[page * 4096 : (page + 1) * 4096]))}
    raw[page * 4096 : (page + 1) * 4096] = b"\xa5" * 4096
    db.write_bytes(bytes(raw))
    return spoiled


def test_a_quarantined_store_keeps_the_salvaged_links_and_verification_says_what_was_lost(tmp_path: Path) -> None:
    db = tmp_path / "device" / "events.db"
    collector = CollectorStore(tmp_path / "collector.db")
    with Outbox(db, owner=True, machine_id="pi-1") as outbox:
        for i in range(60):
            outbox.append("rating", {**rating(1 + i % 4), "press": i, "note": "x" * 200})
        old_epoch = outbox.epoch
        # The first 20 reach the collector; the other 40 are pending when the card is damaged.
        first = outbox.pending(limit=20)
        store_batches(collector, wire_batches("gia-ray", "counter-01", old_epoch, first))
        outbox.mark_acked([(1, 20)])
    spoiled = _spoil_page_holding(db, b'"press":40,')
    assert spoiled and min(spoiled) >= 20
    with Outbox(db, owner=True, machine_id="pi-1") as outbox:
        assert outbox.quarantined is not None
        new_epoch = outbox.epoch
        carried = {e.id: e for e in outbox.pending(limit=1000) if e.type == "rating"}
        outbox.append("rating", rating(4))  # the new epoch's first
        (report,) = [e.data for e in outbox.list_events(type="security")]
        deliver(outbox, "gia-ray", "counter-01", collector)
    collector.close()
    assert report["old_epoch"] == old_epoch and report["old_chain"]["n"] == 60
    assert len(carried) == 40 - len(spoiled)
    # The salvaged copies keep their seq: their links still verify.
    result = run_edge(["verify", "--db", str(tmp_path / "collector.db"), "--json"], check=False)
    chains = {c["epoch"]: c for c in json.loads(result.stdout)}
    old, new = chains[old_epoch], chains[new_epoch]
    assert new["whole"] and new["events"] == 1 and new["length"] == 1
    assert old["events"] == 60 - len(spoiled) and old["carried"] == 40 - len(spoiled) and old["sealed"] == 60
    # What the damaged page held is gone, and verification says so: as missing, named by position.
    missing = {n for b in old["breaks"] if b["kind"] == "missing" for n in range(b["n"], (b["to_n"] or b["n"]) + 1)}
    assert missing == {p + 1 for p in spoiled}
    assert {b["kind"] for b in old["breaks"]} == {"missing"}
    assert result.returncode == 1


# -- tampering, found at the collector --------------------------------------------------------------


@pytest.fixture
def pending_device(tmp_path: Path) -> Iterator[tuple[Outbox, Path]]:
    """A counter with twelve ratings not yet sent."""
    db = tmp_path / "device" / "events.db"
    outbox = Outbox(db)
    for i in range(12):
        outbox.append("rating", rating(1 + i % 4, case=f"HS-{i:04d}"))
    yield outbox, db
    outbox.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def collector_db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The collector's ``--db``: a SQLite file, or a fresh PostgreSQL database (for the breaks that
    ``edge verify`` must name on either: a gap, alterations, a forgery; an untouched chain on
    PostgreSQL is the first step of the alteration at the collector)."""
    if request.param == "postgresql":
        url: str = request.getfixturevalue("postgres_url")
        return url
    return str(tmp_path / "collector.db")


def _verify(db: str) -> tuple[int, dict[str, Any], str]:
    result = run_edge(["verify", "--db", db, "--json"], check=False)
    (chain,) = json.loads(result.stdout)
    text = run_edge(["verify", "--db", db], check=False).stdout
    return result.returncode, chain, text


def _deliver_and_verify(outbox: Outbox, db: str) -> tuple[int, dict[str, Any], str]:
    store = open_storage(db)
    try:
        deliver(outbox, "gia-ray", "counter-01", store)
    finally:
        store.close()
    return _verify(db)


def _tamper_device(db: Path, sql: str, params: tuple[Any, ...]) -> None:
    # Someone with the card: plain SQL on the store, as root on the Pi could.
    conn = sqlite3.connect(db)
    with conn:
        conn.execute(sql, params)
    conn.close()


def _seq_of(outbox: Outbox, n: int) -> int:
    return next(e.seq for e in outbox.pending(limit=100) if e.data.get("chain", {}).get("n") == n)


def test_an_untouched_chain_verifies_whole(pending_device: tuple[Outbox, Path], tmp_path: Path) -> None:
    outbox, _ = pending_device
    code, chain, text = _deliver_and_verify(outbox, str(tmp_path / "collector.db"))
    assert code == 0 and chain["whole"] and chain["verified"] == chain["length"] == 12
    assert "whole: 12 events, n=1..12, verified 1..12" in text


def test_a_rating_deleted_on_the_device_before_it_was_sent(
    pending_device: tuple[Outbox, Path], collector_db: str
) -> None:
    outbox, db = pending_device
    _tamper_device(db, "DELETE FROM events WHERE seq = ?", (_seq_of(outbox, 5),))
    code, chain, text = _deliver_and_verify(outbox, collector_db)
    assert code == 1 and not chain["whole"]
    assert [(b["kind"], b["n"], b["to_n"]) for b in chain["breaks"]] == [("missing", 5, None)]
    assert chain["verified"] == 4 and chain["events"] == 11
    assert re.search(r"missing +n=5 not received \(after seq \d+, before seq \d+\)", text), text


def test_a_score_altered_on_the_device_before_it_was_sent(
    pending_device: tuple[Outbox, Path], collector_db: str
) -> None:
    outbox, db = pending_device
    seq = _seq_of(outbox, 7)
    _tamper_device(
        db, "UPDATE events SET data = json_set(data, '$.score', 4, '$.label', 'very_satisfied') WHERE seq = ?", (seq,)
    )
    code, chain, text = _deliver_and_verify(outbox, collector_db)
    assert code == 1
    assert [(b["kind"], b["n"], b["seq"]) for b in chain["breaks"]] == [("altered", 7, seq)]
    assert chain["verified"] == 6
    assert f"altered    n=7 (seq {seq}," in text


#: Someone with the collector's database gives rating n=3 to another officer, in its own dialect.
_ALTER_AT_COLLECTOR = {
    "sqlite": "UPDATE events SET data = json_set(data, '$.officer', 'nv-99') WHERE json_extract(data, '$.chain.n') = 3",
    "postgresql": "UPDATE events SET data = jsonb_set(data::jsonb, '{officer}', '\"nv-99\"')::text "
    "WHERE (data::jsonb #>> '{chain,n}')::int = 3",
}


def test_a_score_altered_at_the_collector(pending_device: tuple[Outbox, Path], collector_db: str) -> None:
    outbox, _ = pending_device
    code, chain, _ = _deliver_and_verify(outbox, collector_db)
    assert code == 0
    status = "SELECT whole, first_break_kind, first_break_n FROM chains"
    with open_db(collector_db, write=True) as db:
        assert list(db.query(status)) == [(1, None, None)]  # as the collector recorded it at store
        db.write([(_ALTER_AT_COLLECTOR[db.dialect], None)])
    code, chain, text = _verify(collector_db)
    assert code == 1 and [(b["kind"], b["n"]) for b in chain["breaks"]] == [("altered", 3)]
    assert "altered    n=3 (seq " in text
    # --record puts the finding where the collector keeps its own.
    assert run_edge(["verify", "--db", collector_db, "--record"], check=False).returncode == 1
    with open_db(collector_db) as db:
        assert list(db.query(status)) == [(0, "altered", 3)]


def test_ratings_reordered_on_the_device(pending_device: tuple[Outbox, Path], tmp_path: Path) -> None:
    outbox, db = pending_device
    # Swap two ratings' contents between their rows, as if the later one had come first.
    a, b = _seq_of(outbox, 8), _seq_of(outbox, 9)
    conn = sqlite3.connect(db)
    with conn:
        da = conn.execute("SELECT data FROM events WHERE seq = ?", (a,)).fetchone()[0]
        db_ = conn.execute("SELECT data FROM events WHERE seq = ?", (b,)).fetchone()[0]
        conn.execute("UPDATE events SET data = ? WHERE seq = ?", (db_, a))
        conn.execute("UPDATE events SET data = ? WHERE seq = ?", (da, b))
    conn.close()
    code, chain, text = _deliver_and_verify(outbox, str(tmp_path / "collector.db"))
    assert code == 1
    assert [(x["kind"], x["n"]) for x in chain["breaks"]] == [("reordered", 8)]
    assert chain["verified"] == 7
    assert f"reordered  n=9 (seq {a}) is stored before n=8 (seq {b})" in text


def test_a_forged_rating_beside_a_real_one_and_a_stripped_chain(
    pending_device: tuple[Outbox, Path], collector_db: str
) -> None:
    outbox, _ = pending_device
    db = collector_db
    store = open_storage(db)
    try:
        deliver(outbox, "gia-ray", "counter-01", store)
        with open_db(db) as reader:
            (real,) = [r.data for r in reader.events(["rating"]) if r.data and r.data["chain"]["n"] == 10]
        forged = {**real, "score": 1, "label": "dissatisfied"}
        stripped = rating(2)
        body = [
            {"id": "0193aaaa-0000-7000-8000-000000000001", "seq": 500, "type": "rating", "priority": "critical",
             "ts": "2026-11-21T08:15:30.123+07:00", "clock_synced": True, "data": forged},
            {"id": "0193aaaa-0000-7000-8000-000000000002", "seq": 501, "type": "rating", "priority": "critical",
             "ts": "2026-11-21T08:16:30.123+07:00", "clock_synced": True, "data": stripped},
        ]  # fmt: skip
        payload = {"v": 1, "device": "counter-01", "commune": "gia-ray", "epoch": outbox.epoch, "events": body}
        store_batches(store, [json.dumps(payload).encode()])
    finally:
        store.close()
    result = run_edge(["verify", "--db", db, "--json"], check=False)
    (chain,) = json.loads(result.stdout)
    kinds = [(b["kind"], b["n"], b["seq"]) for b in chain["breaks"]]
    assert ("duplicate", 10, next(b["seq"] for b in chain["breaks"] if b["kind"] == "duplicate")) in kinds
    assert ("unchained", None, 501) in kinds
    # The real rating is the one that links: the chain past it still verifies, and the forgery is named.
    assert "0193aaaa-0000-7000-8000-000000000001" in next(
        b["detail"] for b in chain["breaks"] if b["kind"] == "duplicate"
    )
    assert chain["verified"] == 9


# -- the verifier as the collector will run it ----------------------------------------------------------


def test_the_verifier_takes_batches_in_any_order_and_records_the_chains_table(tmp_path: Path) -> None:
    with Outbox(tmp_path / "device" / "events.db") as outbox:
        for i in range(30):
            outbox.append("rating", rating(1 + i % 4))
            if i % 7 == 0:
                outbox.append("broadcast", {"broadcast_id": f"b-{i}", "state": "finished", "duration_s": 1.5})
        events = outbox.pending(limit=1000)
        epoch = outbox.epoch
    # A live rating goes out before the backlog behind it (DESIGN.md §4): the newest batch first.
    payloads = [p for e in reversed(events) for p in wire_batches("gia-ray", "counter-01", epoch, [e])]
    verifier = ChainVerifier()
    key = ("gia-ray", "counter-01", epoch)
    assert verifier.feed(parse(EventBatch, payloads[0], 1 << 20)) == {key}
    gap = verifier.status(key)
    assert [(b.kind, b.n, b.to_n) for b in gap.breaks] == [("missing", 1, 34)] and gap.verified == 0
    for payload in payloads[1:]:
        verifier.feed(parse(EventBatch, payload, 1 << 20))
    whole = verifier.status(key)
    assert whole.whole and whole.verified == whole.length == whole.events == 35
    # A repeat changes nothing.
    assert verifier.feed(parse(EventBatch, payloads[5], 1 << 20)) == set()

    db = tmp_path / "collector.db"
    store = CollectorStore(db)
    store_batches(store, payloads)
    store.close()
    assert run_edge(["verify", "--db", str(db), "--record"]).returncode == 0
    conn = sqlite3.connect(db)
    row = conn.execute("SELECT commune, device, epoch, events, length, verified, whole, breaks FROM chains").fetchall()
    columns = {r[1] for r in conn.execute("PRAGMA table_info(chains)")}
    conn.close()
    assert row == [("gia-ray", "counter-01", epoch, 35, 35, 35, 1, 0)]
    # Every column of the table is described for browsing.
    assert set(metadata(db)["databases"][db.stem]["tables"]["chains"]["columns"]) == columns
