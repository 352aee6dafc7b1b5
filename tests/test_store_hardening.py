"""The outbox under failure: a writer that must not die, corruption told apart from trouble,
size caps at append, a store moved to another machine, file modes and dedupe across clock jumps."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from edge.store import NewEvent, Outbox


def test_append_many_runs_also_in_the_same_transaction(tmp_path: Path) -> None:
    with Outbox(tmp_path / "events.db") as outbox:
        outbox.transact(lambda conn: conn.execute("CREATE TABLE schedule (id TEXT PRIMARY KEY)"))
        seen_in_txn: list[bool] = []

        def also(conn: sqlite3.Connection) -> None:
            seen_in_txn.append(conn.in_transaction)
            conn.execute("INSERT INTO schedule (id) VALUES ('b1')")

        committed = outbox.append_many([NewEvent("broadcast", {"id": "b1"})], also=also)
        assert seen_in_txn == [True]
        assert outbox.query("SELECT id FROM schedule") == [("b1",)]
        assert [e.id for e in outbox.pending()] == [committed[0].id]

        # A failing ``also`` leaves neither its rows nor the events behind.
        def also_fails(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO schedule (id) VALUES ('b2')")
            raise ValueError("schedule refused")

        with pytest.raises(ValueError, match="schedule refused"):
            outbox.append_many([NewEvent("broadcast", {"id": "b2"})], also=also_fails)
        assert outbox.query("SELECT id FROM schedule") == [("b1",)]
        assert len(outbox.pending()) == 1
