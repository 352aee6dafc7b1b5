"""The schedule on disk: one row per item in ``events.db``, written with the event that reports it.

Every change of an item's state is committed in the same transaction as its ``broadcast`` event
(:meth:`~edge.store.Outbox.append_many` with ``also=``): after a crash the schedule and the proof of
play never disagree. The table lives in the event store so that one fsync covers both, and so that a
restored or quarantined store carries its schedule with it.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from edge.services.broadcast.plan import Item, PlayArgs
from edge.store import NewEvent, Outbox
from edge.store.outbox import Committed

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS broadcast_schedule (
    broadcast_id TEXT PRIMARY KEY,
    arrival      INTEGER NOT NULL,   -- order of arrival: equal priorities play in this order
    cmd_id       TEXT,               -- the broadcast.play that scheduled it
    args         TEXT NOT NULL,      -- its arguments, JSON
    state        TEXT NOT NULL,      -- scheduled | playing
    due          REAL,               -- Unix time the next play may start; NULL: nothing left
    deadline     REAL,               -- Unix time past which the current occurrence is expired
    occurrence   TEXT,               -- programme: the local date-time of the current occurrence
    play         INTEGER NOT NULL,   -- which of the occurrence's repeats is next, from 1
    position_s   REAL NOT NULL,      -- where the next play starts (a cut item resumes here)
    resuming     INTEGER NOT NULL,   -- the next play continues a cut one
    started_at   TEXT,               -- while playing: when the play started
    updated      REAL NOT NULL
) WITHOUT ROWID;
"""

RowWriter = Callable[[sqlite3.Connection], None]


@dataclass(frozen=True)
class LoadedItem:
    """An item read back at start, with whether it was on the air when the daemon stopped."""

    item: Item
    was_playing: bool


class ScheduleStore:
    """Reads and writes the ``broadcast_schedule`` table of one outbox."""

    def __init__(self, outbox: Outbox, args_model: type[PlayArgs] = PlayArgs) -> None:
        self.outbox = outbox
        # Rows are read back with the plain model: a stored item was checked when it arrived, and a
        # zone or host removed from the configuration since is the scheduler's business, not a parse error.
        self._args_model = args_model
        # One statement, run with execute(): executescript() would commit the writer's open transaction.
        outbox.transact(lambda conn: conn.execute(_SCHEMA))

    # -- writing (inside the event's transaction) --------------------------------------------------

    @staticmethod
    def upsert(item: Item) -> RowWriter:
        """A writer that stores ``item`` as it is now."""
        row = (
            item.broadcast_id,
            item.arrival,
            item.cmd_id,
            item.args.model_dump_json(),
            item.state,
            item.due,
            item.deadline,
            item.occurrence.isoformat() if item.occurrence is not None else None,
            item.play,
            item.position_s,
            int(item.resuming),
            item.started_at,
            time.time(),
        )

        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO broadcast_schedule (broadcast_id, arrival, cmd_id, args, state, due, deadline, "
                "occurrence, play, position_s, resuming, started_at, updated) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (broadcast_id) DO UPDATE SET "
                "arrival = excluded.arrival, cmd_id = excluded.cmd_id, args = excluded.args, "
                "state = excluded.state, due = excluded.due, deadline = excluded.deadline, "
                "occurrence = excluded.occurrence, play = excluded.play, position_s = excluded.position_s, "
                "resuming = excluded.resuming, started_at = excluded.started_at, updated = excluded.updated",
                row,
            )

        return write

    @staticmethod
    def delete(broadcast_id: str) -> RowWriter:
        def write(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM broadcast_schedule WHERE broadcast_id = ?", (broadcast_id,))

        return write

    @staticmethod
    def delete_all() -> RowWriter:
        def write(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM broadcast_schedule")

        return write

    def commit(self, events: Iterable[Mapping[str, Any]], writers: Iterable[RowWriter]) -> list[Committed]:
        """Commit ``broadcast`` events and the row changes they report, in one transaction."""
        todo = list(writers)

        def also(conn: sqlite3.Connection) -> None:
            for write in todo:
                write(conn)

        return self.outbox.append_many([NewEvent("broadcast", dict(data)) for data in events], also=also)

    def checkpoint(self, broadcast_id: str, position_s: float) -> None:
        """Note how far the item on the air has got, so a resume after a crash starts near there.

        Not fsynced: it survives a crash of the process (WAL), and after a power cut the item
        resumes from an earlier checkpoint, which is harmless.
        """

        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE broadcast_schedule SET position_s = ?, updated = ? "
                "WHERE broadcast_id = ? AND state = 'playing'",
                (position_s, time.time(), broadcast_id),
            )

        self.outbox.transact(write, durable=False)

    # -- reading -----------------------------------------------------------------------------------

    def load(self) -> list[LoadedItem]:
        """Every stored item, in arrival order. Rows that cannot be read are logged and skipped."""
        rows = self.outbox.query(
            "SELECT broadcast_id, arrival, cmd_id, args, state, due, deadline, occurrence, play, position_s, "
            "resuming, started_at FROM broadcast_schedule ORDER BY arrival"
        )
        out: list[LoadedItem] = []
        for bid, arrival, cmd_id, args, state, due, deadline, occurrence, play, position, resuming, started in rows:
            try:
                parsed = self._args_model.model_validate(json.loads(args))
            except (ValueError, ValidationError) as exc:
                log.error("schedule row %s cannot be read, skipped: %s", bid, exc)
                continue
            item = Item(
                args=parsed,
                arrival=int(arrival),
                zones=(),
                cmd_id=cmd_id,
                state="scheduled",
                due=due,
                deadline=deadline,
                occurrence=datetime.fromisoformat(occurrence) if occurrence else None,
                play=int(play),
                position_s=float(position),
                resuming=bool(resuming),
                started_at=started,
            )
            out.append(LoadedItem(item, was_playing=state == "playing"))
        return out

    def last_arrival(self) -> int:
        row = self.outbox.query("SELECT MAX(arrival) FROM broadcast_schedule")
        return int(row[0][0] or 0) if row else 0
