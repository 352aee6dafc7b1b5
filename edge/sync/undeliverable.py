"""Events set aside as undeliverable: never silently dropped, never holding up the rest.

An event the broker will not take at its size (even alone in a message), or that the collector
answers with a rejection, would otherwise be sent again for ever and hold its batch, and every
event behind it, out of the collector. Such an event is *set aside*: it leaves the pending set
(acknowledged locally, so nothing sends it again), and a copy of it, with who refused it and why,
is kept in the ``undeliverable`` table of the same database, in the same transaction.

The copy stays until someone deals with it (``edge status --json`` lists the newest under
``undeliverable``); the event row itself then ages out like any acknowledged one. Disk use is no
worse than a collector that stays offline, and a citizen's rating refused by a collector that
was wrongly strict can still be recovered from the table. ``sync.resend`` over its seq sends it
again while the acknowledged row is still kept.

On a full disk the setting aside waits in memory and is done with the first commit that finds
room (:meth:`edge.store.Outbox.transact_when_room`); the events meanwhile stay pending, and one
sent again is refused again, so nothing stops the uplink and nothing is lost but a repetition.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Sequence
from typing import Any, Literal

from edge.clock import now_iso
from edge.store import PRIORITIES, Outbox

log = logging.getLogger(__name__)

Source = Literal["broker", "collector"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS undeliverable (
    seq       INTEGER PRIMARY KEY,      -- the event's seq in this store's epoch
    id        TEXT    NOT NULL,
    type      TEXT    NOT NULL,
    priority  INTEGER NOT NULL,         -- as in events: 0 critical, 1 normal, 2 bulk
    ts        TEXT    NOT NULL,
    bytes     INTEGER NOT NULL,         -- size of the event's JSON data
    source    TEXT    NOT NULL,         -- broker | collector
    reason    TEXT    NOT NULL,
    at        TEXT    NOT NULL,         -- when it was set aside
    data      TEXT    NOT NULL          -- the event's JSON data, kept
)
"""


def set_aside(outbox: Outbox, ranges: Sequence[tuple[int, int]], source: Source, reason: str) -> list[int]:
    """Set the still-pending events in ``ranges`` (inclusive ``(from_seq, to_seq)``) aside, in one
    durable transaction; returns their seqs (an event acknowledged or evicted meanwhile is left alone).
    On a full disk, returns ``[]``: it is done (and logged) once there is room."""
    spans = [(int(a), int(b)) for a, b in ranges if int(a) <= int(b)]
    if not spans:
        return []

    def op(conn: sqlite3.Connection) -> list[int]:
        conn.execute(_SCHEMA)
        done: list[int] = []
        at, now = now_iso(), time.time()
        for a, b in spans:
            found = [
                int(r[0])
                for r in conn.execute(
                    "SELECT seq FROM events WHERE acked_at IS NULL AND seq BETWEEN ? AND ? ORDER BY seq", (a, b)
                )
            ]
            if not found:
                continue
            conn.execute(
                "INSERT OR REPLACE INTO undeliverable (seq, id, type, priority, ts, bytes, source, reason, at, data) "
                "SELECT seq, id, type, priority, ts, length(CAST(data AS BLOB)), ?, ?, ?, data FROM events "
                "WHERE acked_at IS NULL AND seq BETWEEN ? AND ?",
                (source, reason, at, a, b),
            )
            conn.execute("UPDATE events SET acked_at = ? WHERE acked_at IS NULL AND seq BETWEEN ? AND ?", (now, a, b))
            done.extend(found)
        return done

    def count(conn: sqlite3.Connection) -> list[int]:
        done = op(conn)
        if done:
            # In the same transaction: the count and the events set aside are written together.
            Outbox.add_to_counter(conn, f"undeliverable_{source}", len(done))
        return done

    def report(done: list[int]) -> None:
        if done:
            log.error(
                "set aside %d undeliverable event(s) (seq %s%s), refused by the %s: %s",
                len(done),
                done[0],
                f"..{done[-1]}" if len(done) > 1 else "",
                source,
                reason,
            )

    done = outbox.transact_when_room(count, report)
    if done is None:
        log.warning(
            "the disk is full: %d range(s) refused by the %s (%s) are set aside once there is room",
            len(spans),
            source,
            reason,
        )
        return []
    return done


def _exists(outbox: Outbox) -> bool:
    # The table is made with the first event set aside; a read-only reader must not create it.
    return bool(outbox.query("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'undeliverable'"))


def undeliverable(outbox: Outbox, limit: int = 50) -> list[dict[str, Any]]:
    """The events set aside, newest first: id, seq, type, priority, ts, bytes, source, reason, at."""
    if not _exists(outbox):
        return []
    rows = outbox.query(
        "SELECT id, seq, type, priority, ts, bytes, source, reason, at FROM undeliverable ORDER BY seq DESC LIMIT ?",
        (limit,),
    )
    return [
        {
            "id": r[0],
            "seq": r[1],
            "type": r[2],
            "priority": PRIORITIES[r[3]],
            "ts": r[4],
            "bytes": r[5],
            "source": r[6],
            "reason": r[7],
            "at": r[8],
        }
        for r in rows
    ]


def undeliverable_count(outbox: Outbox) -> int:
    """How many events are set aside."""
    if not _exists(outbox):
        return 0
    return int(outbox.query("SELECT COUNT(*) FROM undeliverable")[0][0])
