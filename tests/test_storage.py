"""The collector's storage backends: SQLite and PostgreSQL, one schema, one behaviour.

Each device here is a real :class:`~edge.store.Outbox`, so its ratings carry the chain links the
device makes; its batches are the device's own wire JSON, parsed with the contract's parser. The
PostgreSQL runs are against a fresh database on the machine's server (or a private one).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.messages import EventBatch, parse
from edge.server.collector import CollectorStore
from edge.server.storage import (
    POSTGRES_MIGRATIONS,
    SQLITE_MIGRATIONS,
    PostgresStorage,
    SqliteStorage,
    Storage,
    StorageError,
    open_storage,
)
from edge.store import Outbox, StoredEvent
from sim.harness import EdgeProcess, collector_rows, run_edge, wait_for
from tests.pg_fixtures import postgres_server, postgres_url  # noqa: F401 (fixtures)
from tests.report_fixtures import wire_batches

COMMUNE = "gia-ray"
DEVICE = "counter-01"


def rating(score: int, **extra: Any) -> dict[str, Any]:
    label = {4: "very_satisfied", 3: "satisfied", 2: "neutral", 1: "dissatisfied"}[score]
    return {"counter": "q1", "officer": "nv-07", "score": score, "label": label, "misuse": None, **extra}


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a collector stores: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "collector.db")
    return str(request.getfixturevalue("postgres_url"))


def query(db: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows read with a connection of their own, as another program would see them."""
    if db.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(db) as conn:
            return conn.execute(sql.replace("?", "%s"), params).fetchall()
    lite = sqlite3.connect(db)
    try:
        return lite.execute(sql, params).fetchall()
    finally:
        lite.close()


def stored_ids(db: str, event_type: str = "rating") -> set[str]:
    """Ids stored so far; none while the collector has yet to make its tables."""
    import psycopg

    try:
        return {r[0] for r in query(db, "SELECT id FROM events WHERE type = ?", (event_type,))}
    except (psycopg.errors.UndefinedTable, sqlite3.OperationalError):
        return set()


@pytest.fixture
def counter(tmp_path: Path) -> Iterator[Outbox]:
    """A counter with twelve ratings committed, none sent."""
    with Outbox(tmp_path / "device" / "events.db") as outbox:
        for i in range(12):
            outbox.append("rating", rating(1 + i % 4, case=f"HS-{i:04d}"))
        yield outbox


def batches(outbox: Outbox, events: list[StoredEvent], size: int = 500) -> list[EventBatch]:
    return [parse(EventBatch, p, 4 * 1024 * 1024) for p in wire_batches(COMMUNE, DEVICE, outbox.epoch, events, size)]


def chain_row(db: str) -> dict[str, Any]:
    rows = query(db, "SELECT events, length, verified, whole, breaks, first_break_kind, first_break_n FROM chains")
    assert len(rows) == 1
    keys = ("events", "length", "verified", "whole", "breaks", "first_break_kind", "first_break_n")
    return dict(zip(keys, rows[0], strict=True))


def test_open_storage_picks_the_backend_by_the_db_given(tmp_path: Path, postgres_url: str) -> None:  # noqa: F811
    sqlite_store, pg_store = open_storage(tmp_path / "c.db"), open_storage(postgres_url)
    try:
        assert isinstance(sqlite_store, SqliteStorage) and isinstance(pg_store, PostgresStorage)
        assert CollectorStore is SqliteStorage  # the name the SQLite backend had before
    finally:
        sqlite_store.close()
        pg_store.close()


def test_a_url_of_another_database_is_refused_not_taken_for_a_file_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # where a mistaken SQLite file would appear
    with pytest.raises(StorageError, match=r"mysql:// is not a database"):
        open_storage("mysql://root@127.0.0.1/commune")
    assert list(tmp_path.iterdir()) == []


def test_events_are_stored_once_by_id_however_often_a_batch_comes(db: str, counter: Outbox) -> None:
    events = counter.pending(limit=100)
    store: Storage = open_storage(db)
    try:
        first = store.store(batches(counter, events[:8], size=4))
        assert [new for _, new in first] == [4, 4]
        # The second batch again (its evtack was lost) together with the rest: only the rest is new.
        again = store.store(batches(counter, events[4:], size=4))
        assert [new for _, new in again] == [0, 4]
        assert [new for _, new in store.store(batches(counter, events))] == [0]
    finally:
        store.close()
    stored = query(db, "SELECT id, seq, type, device, commune, epoch, clock_synced, data FROM events ORDER BY rowid")
    assert [r[0] for r in stored] == [e.id for e in events]
    assert [r[1] for r in stored] == list(range(1, 13))
    assert {(r[2], r[3], r[4], r[5]) for r in stored} == {("rating", DEVICE, COMMUNE, counter.epoch)}
    assert [json.loads(r[7]) for r in stored] == [e.data for e in events]


def test_the_schema_is_made_by_the_collector_and_recorded_in_schema_version(db: str) -> None:
    open_storage(db).close()
    open_storage(db).close()  # opening again migrates nothing
    known = len(POSTGRES_MIGRATIONS if db.startswith("postgresql://") else SQLITE_MIGRATIONS)
    assert [v for (v,) in query(db, "SELECT version FROM schema_version ORDER BY version")] == list(range(1, known + 1))
    assert query(db, "SELECT count(*) FROM events") == [(0,)]
    assert query(db, "SELECT count(*) FROM chains") == [(0,)]


def test_a_database_from_a_newer_collector_is_refused(db: str) -> None:
    open_storage(db).close()
    if db.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(db) as conn:
            conn.execute("INSERT INTO schema_version VALUES (99, 'later')")
    else:
        with sqlite3.connect(db) as conn:
            conn.execute("INSERT INTO schema_version VALUES (99, 'later')")
    with pytest.raises(StorageError, match="schema version 99, newer than this collector's"):
        open_storage(db)


def test_a_database_written_before_schema_version_is_migrated_in_place(tmp_path: Path, counter: Outbox) -> None:
    db = tmp_path / "collector.db"
    # The collector's file as earlier versions left it: the events table only, with a stored row.
    conn = sqlite3.connect(db)
    conn.executescript(SQLITE_MIGRATIONS[0])
    first = counter.pending(limit=1)[0]
    conn.execute(
        "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (first.id, DEVICE, COMMUNE, counter.epoch, 1, "rating", "critical", first.ts, 1, json.dumps(first.data), "x"),
    )
    conn.commit()
    conn.close()
    store = SqliteStorage(db)
    try:
        new = store.store(batches(counter, counter.pending(limit=100)))
    finally:
        store.close()
    assert [n for _, n in new] == [11]
    versions = [v for (v,) in query(str(db), "SELECT version FROM schema_version")]
    assert versions == list(range(1, len(SQLITE_MIGRATIONS) + 1))
    assert chain_row(str(db))["verified"] == 12


def test_chains_are_verified_as_events_are_stored(db: str, counter: Outbox) -> None:
    events = counter.pending(limit=100)
    store = open_storage(db)
    try:
        store.store(batches(counter, events[:5]))
        # n = 1..5 arrived; the fifth's content is vouched for only when the sixth arrives.
        assert chain_row(db) | {"first_break_kind": None} == {
            "events": 5,
            "length": 5,
            "verified": 5,
            "whole": 1,
            "breaks": 0,
            "first_break_kind": None,
            "first_break_n": None,
        }
        # The sixth is lost in transit (for now): the rest arrives, and the gap is named.
        store.store(batches(counter, events[6:]))
        row = chain_row(db)
        assert row["whole"] == 0 and row["first_break_kind"] == "missing" and row["first_break_n"] == 6
        assert row["verified"] == 5 and row["events"] == 11 and row["length"] == 12
        # The device sends it again: the chain is whole.
        store.store(batches(counter, events[5:6]))
        assert chain_row(db) | {"first_break_kind": None} == {
            "events": 12,
            "length": 12,
            "verified": 12,
            "whole": 1,
            "breaks": 0,
            "first_break_kind": None,
            "first_break_n": None,
        }
    finally:
        store.close()


def test_an_altered_rating_is_recorded_as_a_break_in_the_same_transaction(db: str, counter: Outbox) -> None:
    events = counter.pending(limit=100)
    payloads = wire_batches(COMMUNE, DEVICE, counter.epoch, events)
    # Someone on the way turns the third rating's score 3 into a 1.
    doctored = payloads[0].replace(b'"score":3,"label":"satisfied"', b'"score":1,"label":"dissatisfied"', 1)
    assert doctored != payloads[0]
    store = open_storage(db)
    try:
        store.store([parse(EventBatch, doctored, 4 * 1024 * 1024)])
    finally:
        store.close()
    row = chain_row(db)
    assert row["whole"] == 0 and row["first_break_kind"] == "altered" and row["first_break_n"] == 3
    assert row["verified"] == 2


def test_a_second_collector_on_the_same_database_verifies_what_the_first_stored(
    postgres_url: str,  # noqa: F811
    counter: Outbox,
) -> None:
    events = counter.pending(limit=100)
    one, two = open_storage(postgres_url), open_storage(postgres_url)
    try:
        # Batches of one device alternate between two collectors, as a shared subscription hands them out.
        for i, batch in enumerate(batches(counter, events, size=3)):
            (one if i % 2 == 0 else two).store([batch])
        # Each collector's own verifier saw half the batches; the table holds the whole chain.
        assert chain_row(postgres_url)["verified"] == 12 and chain_row(postgres_url)["whole"] == 1
    finally:
        one.close()
        two.close()


def test_edge_collect_stores_into_postgresql_and_acknowledges(
    tmp_path: Path,
    broker: Any,
    device: Any,
    postgres_url: str,  # noqa: F811
) -> None:
    collector = EdgeProcess(
        ["collect", "--broker", broker.url, "--db", postgres_url, "--commune", COMMUNE, "--summary-interval", "0"],
        tmp_path / "collector.log",
    ).start()
    daemon = device.daemon().start()
    try:
        data = json.dumps(rating(4))
        ids = run_edge(["emit", "rating", "--count", "7", "--data", data], env=device.env).stdout.split()
        assert len(ids) == 7

        assert wait_for(lambda: stored_ids(postgres_url) == set(ids), 60.0), "the ratings never reached PostgreSQL"
        # Acknowledged: nothing of it is left pending on the device (its store read read-only).
        assert wait_for(
            lambda: collector_rows(device.db, "SELECT id FROM events WHERE type = 'rating' AND acked_at IS NULL") == [],
            60.0,
        ), "the device never got its evtack"
        assert chain_row(postgres_url)["verified"] == 7
    finally:
        daemon.stop()
        out = collector.stop()
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["stored_by_type"]["rating"] == 7 and summary["acks_sent"] >= 1


def test_a_lost_postgresql_connection_fails_one_store_and_the_next_one_reconnects(
    postgres_url: str,  # noqa: F811
    counter: Outbox,
) -> None:
    import psycopg

    events = counter.pending(limit=100)
    store = PostgresStorage(postgres_url)
    try:
        store.store(batches(counter, events[:6]))
        # The server ends the collector's session (a restart, a failover): that store fails, so
        # nothing is acknowledged and the devices send again; the next store reconnects.
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        with pytest.raises(StorageError):
            store.store(batches(counter, events[6:]))
        assert [new for _, new in store.store(batches(counter, events[6:]))] == [6]
    finally:
        store.close()
    assert query(postgres_url, "SELECT count(*) FROM events") == [(12,)]
    assert chain_row(postgres_url)["verified"] == 12 and chain_row(postgres_url)["whole"] == 1


def test_the_chain_check_reads_its_partial_index_on_sqlite(tmp_path: Path) -> None:
    """The index covers only the chained and sealing types, so storing a test or health event costs
    it nothing; the query that reads it must spell its condition so that SQLite's planner uses it."""
    storage = SqliteStorage(tmp_path / "collector.db")
    try:
        index_sql = storage.conn.execute(
            "SELECT sql FROM sqlite_master WHERE name = 'events_chained_by_arrival'"
        ).fetchone()[0]
        assert " IN " not in index_sql.upper()  # an IN list here is evaluated dearly on every insert
        where = index_sql.split(" WHERE ", 1)[1]
        plan = storage.conn.execute(
            f"EXPLAIN QUERY PLAN SELECT rowid FROM events WHERE commune = ? AND device = ? AND {where} "
            "AND rowid > ? ORDER BY rowid",
            ("gia-ray", "quay-1", 0),
        ).fetchall()
        assert any("events_chained_by_arrival" in str(step[-1]) for step in plan), plan
    finally:
        storage.close()
