"""Reading what can still be read from a quarantined (corrupt) event store.

A corrupt page usually spoils a few rows, not the file: the pending events on every other page
are ratings and proof of play that no one else has, so they are copied into the new store rather
than left stranded next to it. Reading is best effort and row by row: where the table cannot be
walked past a row, the following sequence numbers are looked up one at a time, and every one that
fails is counted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from edge.store.chain import ChainHead

log = logging.getLogger(__name__)

#: How far past the last readable row to probe when the file no longer says how many rows it had.
_BLIND_PROBES = 10_000


@dataclass(frozen=True)
class SalvagedEvent:
    """A pending event as it was in the old store (its old ``seq`` is only used to map dedupe keys)."""

    old_seq: int
    id: str
    type: str
    priority: int
    ts: str
    clock_synced: int
    data: str


@dataclass
class Salvage:
    """What was read from a quarantined store."""

    readable: bool = False
    events: list[SalvagedEvent] = field(default_factory=list)
    #: Sequence numbers whose row could not be read (they may have been pending or acknowledged).
    unreadable: int = 0
    #: Ids of the acknowledged events that could be read: safe on the server.
    acked_ids: set[str] = field(default_factory=set)
    #: ``(key, event id, old seq, expires, boot, live_until)``; boot and live_until may be None.
    dedupe: list[tuple[str, str, int, float, str | None, float | None]] = field(default_factory=list)
    commands: list[tuple[Any, ...]] = field(default_factory=list)
    replies: list[tuple[Any, ...]] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)
    uptime_seen: str | None = None
    #: The old store's epoch and the last link of its chain, when its ``meta`` could be read.
    epoch: str | None = None
    chain_head: ChainHead | None = None


def _valid_event(row: tuple[Any, ...], check_type: Callable[[str], None]) -> SalvagedEvent | None:
    """The row as an event if every field is what the store writes; None for a damaged row.
    ``id`` and ``ts`` go into a batch unescaped, so they are checked strictly."""
    seq, event_id, etype, prio, ts, synced, data = row
    try:
        if not isinstance(event_id, str) or str(uuid.UUID(event_id)) != event_id:
            return None
        if not isinstance(ts, str) or '"' in ts or "\\" in ts:
            return None
        datetime.fromisoformat(ts)
        if not isinstance(data, str):
            return None
        json.loads(data)
    except ValueError:
        return None
    try:
        check_type(etype)
    except (TypeError, ValueError):
        return None
    if prio not in (0, 1, 2) or synced not in (0, 1):
        return None
    return SalvagedEvent(int(seq), event_id, etype, int(prio), ts, int(synced), data)


def _take(row: Sequence[Any], out: Salvage, check_type: Callable[[str], None]) -> None:
    if row[7] is not None:
        if isinstance(row[1], str):
            out.acked_ids.add(row[1])
        return
    event = _valid_event(tuple(row[:7]), check_type)
    if event is None:
        out.unreadable += 1
    else:
        out.events.append(event)


def _events(conn: sqlite3.Connection, out: Salvage, check_type: Callable[[str], None]) -> None:
    hi: int | None = None
    for sql in ("SELECT max(seq) FROM events", "SELECT seq FROM sqlite_sequence WHERE name = 'events'"):
        with contextlib.suppress(sqlite3.Error):
            row = conn.execute(sql).fetchone()
            if row and row[0] is not None:
                hi = max(hi or 0, int(row[0]))
    cols = "seq, id, type, priority, ts, clock_synced, data, acked_at"
    pos = 0
    blind = 0
    while True:
        try:
            # In rowid order on the table itself: the pending index may be what is damaged.
            for row in conn.execute(f"SELECT {cols} FROM events WHERE seq > ? ORDER BY seq", (pos,)):
                pos = int(row[0])
                blind = 0
                _take(row, out, check_type)
            return
        except sqlite3.Error:
            pass
        # The table cannot be walked past ``pos``: look the next row up on its own.
        nxt = pos + 1
        if (hi is not None and nxt > hi) or blind >= _BLIND_PROBES:
            return
        try:
            row = conn.execute(f"SELECT {cols} FROM events WHERE seq = ?", (nxt,)).fetchone()
        except sqlite3.Error:
            out.unreadable += 1
            blind = 0 if hi is not None else blind + 1
        else:
            if row is None:
                blind += 1
            else:
                _take(row, out, check_type)
        pos = nxt


def _rows(conn: sqlite3.Connection, sql: str) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` up to the first one that cannot be read."""
    rows: list[tuple[Any, ...]] = []
    with contextlib.suppress(sqlite3.Error):
        for row in conn.execute(sql):
            rows.append(tuple(row))
    return rows


def salvage(path: Path, check_type: Callable[[str], None]) -> Salvage:
    """Read the pending events (and the dedupe keys, command journal, unsent replies and counters
    that belong with them) of the store at ``path``, opened read-only. Never raises for the file's
    sake: what cannot be read is left out and counted. ``check_type`` is the store's rule for event
    types (it raises ValueError)."""
    out = Salvage()
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5.0)
    except sqlite3.Error as exc:
        log.warning("quarantined store %s cannot be opened: %s", path, exc)
        return out
    try:
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.Error as exc:
            log.warning("quarantined store %s cannot be read at all: %s", path, exc)
            return out
        out.readable = True
        _events(conn, out, check_type)
        try:
            out.dedupe = [
                (str(r[0]), str(r[1]), int(r[2]), float(r[3]), r[4], r[5])
                for r in _rows(conn, "SELECT key, id, seq, expires, boot, live_until FROM dedupe")
            ]
        except (TypeError, ValueError):
            out.dedupe = []
        if not out.dedupe:
            # A store from before dedupe keys were measured on the boot clock.
            with contextlib.suppress(TypeError, ValueError):
                out.dedupe = [
                    (str(r[0]), str(r[1]), int(r[2]), float(r[3]), None, None)
                    for r in _rows(conn, "SELECT key, id, seq, expires FROM dedupe")
                ]
        out.commands = _rows(conn, "SELECT cmd_id, name, exp, state, reason, result, updated FROM commands")
        out.replies = _rows(conn, "SELECT topic, payload, retain FROM replies ORDER BY id")
        for name, value in _rows(conn, "SELECT name, value FROM counters"):
            if isinstance(name, str) and isinstance(value, int):
                out.counters[name] = value
        meta = dict(_rows(conn, "SELECT key, value FROM meta WHERE key IN ('uptime_seen', 'epoch', 'chain')"))
        out.uptime_seen = str(meta["uptime_seen"]) if "uptime_seen" in meta else None
        out.epoch = str(meta["epoch"]) if "epoch" in meta else None
        with contextlib.suppress(TypeError, ValueError, KeyError):
            head = json.loads(meta["chain"])
            out.chain_head = ChainHead(str(head["epoch"]), int(head["n"]), str(head["digest"]))
    finally:
        conn.close()
    return out
