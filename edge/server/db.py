"""Reading the collector's SQLite database (table ``events``, as ``edge collect`` writes it).

Everything here opens the file read-only: a report or a verification may run next to a collector
that is storing, and must never change what it stored.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from edge.exceptions import EdgeError

log = logging.getLogger(__name__)

#: Vietnam's time (UTC+7, no daylight saving): a month of the report is a calendar month here.
VIETNAM = timezone(timedelta(hours=7), "ICT")

_COLUMNS = "rowid, id, device, commune, epoch, seq, type, priority, ts, clock_synced, data, received_at"


class CollectorDbError(EdgeError, ValueError):
    """The collector's database is missing or is not one."""


@dataclass(frozen=True)
class Row:
    """One event as the collector stored it. ``data`` is None when its JSON cannot be read."""

    rowid: int
    id: str
    device: str
    commune: str
    epoch: str
    seq: int
    type: str
    priority: str
    ts: str
    clock_synced: bool
    data: dict[str, Any] | None
    received_at: str

    def local_time(self, tz: timezone = VIETNAM) -> datetime | None:
        """The event's time in ``tz``, or None if its ``ts`` is not an ISO time with an offset."""
        return parse_time(self.ts, tz)


def parse_time(text: str | None, tz: timezone = VIETNAM) -> datetime | None:
    """An ISO 8601 time with its offset, in ``tz``; None if it is missing, unreadable or has no offset."""
    if not isinstance(text, str):
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    if when.tzinfo is None:
        return None
    return when.astimezone(tz)


def connect_readonly(path: str | Path) -> sqlite3.Connection:
    """The collector database at ``path``, read-only; raises CollectorDbError if it is not there or
    has no ``events`` table."""
    db = Path(path)
    if not db.is_file():
        raise CollectorDbError(f"no collector database at {db}")
    try:
        conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=15.0)
        conn.execute("PRAGMA busy_timeout = 15000")
        found = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'events'").fetchone()
    except sqlite3.Error as exc:
        raise CollectorDbError(f"cannot read {db}: {exc}") from exc
    if found is None:
        conn.close()
        raise CollectorDbError(f"{db} has no events table; is it a collector database (edge collect --db)?")
    return conn


def _row(r: tuple[Any, ...]) -> Row:
    try:
        data = json.loads(r[10])
    except (TypeError, ValueError):
        data = None
    return Row(
        rowid=int(r[0]),
        id=str(r[1]),
        device=str(r[2]),
        commune=str(r[3]),
        epoch=str(r[4]),
        seq=int(r[5]),
        type=str(r[6]),
        priority=str(r[7]),
        ts=str(r[8]),
        clock_synced=bool(r[9]),
        data=data if isinstance(data, dict) else None,
        received_at=str(r[11]),
    )


def events(
    conn: sqlite3.Connection,
    types: Iterable[str],
    *,
    commune: str | None = None,
    device: str | None = None,
    around: tuple[datetime, datetime] | None = None,
) -> Iterator[Row]:
    """Stored events of ``types``, oldest arrival first.

    ``around`` narrows by time roughly, on the text of ``ts`` with a day's margin either side (a
    ``ts`` carries its device's offset, so the text of two equal moments can differ by up to 14
    hours): the caller filters exactly on :meth:`Row.local_time`.
    """
    kinds = list(types)
    where = [f"type IN ({','.join('?' * len(kinds))})"]
    params: list[Any] = list(kinds)
    if commune is not None:
        where.append("commune = ?")
        params.append(commune)
    if device is not None:
        where.append("device = ?")
        params.append(device)
    if around is not None:
        start, end = around
        where.append("ts >= ? AND ts < ?")
        params += [(start - timedelta(days=1)).date().isoformat(), (end + timedelta(days=1)).date().isoformat()]
    sql = f"SELECT {_COLUMNS} FROM events WHERE {' AND '.join(where)} ORDER BY rowid"
    for r in conn.execute(sql, params):
        yield _row(tuple(r))


def devices(conn: sqlite3.Connection, commune: str | None = None) -> list[tuple[str, str]]:
    """Every ``(commune, device)`` that has stored events, sorted."""
    if commune is None:
        rows = conn.execute("SELECT DISTINCT commune, device FROM events ORDER BY commune, device").fetchall()
    else:
        rows = conn.execute(
            "SELECT DISTINCT commune, device FROM events WHERE commune = ? ORDER BY device", (commune,)
        ).fetchall()
    return [(str(c), str(d)) for c, d in rows]
