"""The device's hash chain over its ratings and proof of play (DESIGN.md §10).

Each ``rating`` and ``broadcast`` event's ``data`` carries ``"chain": {"epoch": E, "n": k, "prev": h}``:

- ``n`` counts the store's chained events in epoch ``E`` from 1;
- ``prev`` is the SHA-256 (hex) of the previous chained event's canonical form, 64 zeros for ``n`` = 1;
- the canonical form of an event is :func:`edge.jsonfmt.canonical` of
  ``{"id", "seq", "type", "ts", "data"}`` with ``data.chain`` in it whole.

The link is made by the outbox's writer in the transaction that inserts the event, and the chain
head (epoch, last ``n``, last digest) is kept in ``meta`` and updated in that same transaction: a
crash, a rolled-back group commit or a second process appending (``edge emit`` next to ``edge
run``) can never fork the chain, because the head is read and written under SQLite's write lock.

``epoch`` says which chain an event belongs to. It is the batch's epoch, except for events carried
into a new epoch (pending events salvaged from a quarantined store, or made pending again when a
store moved): they keep their data, and with it the link of the epoch they were committed in, so
the collector, which stores by id, sees the same event whichever copy reaches it. The new epoch's
chain starts at ``n`` = 1 with the first event committed in it.

A rating deleted from the device before it was sent, or lost on the way, leaves its ``n`` missing;
an altered event no longer hashes to its successor's ``prev``. What the chain cannot show alone is
the loss or change of the *newest* chained event, which has no successor yet: the next one shows it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edge.jsonfmt import canonical, compact

log = logging.getLogger(__name__)

#: The event types that are chained.
CHAINED_TYPES = frozenset({"rating", "broadcast"})
#: ``prev`` of the first event of a chain.
GENESIS = "0" * 64
#: The ``meta`` key holding the chain head as JSON ``{"epoch", "n", "digest"}``.
META_HEAD = "chain"
#: What the ``chain`` member adds to an event's data at most (a 64-hex epoch, a 19-digit ``n``):
#: reserved when an event's size is checked at append, so a chained event still fits in a batch.
CHAIN_BYTES = 200


@dataclass(frozen=True)
class ChainHead:
    """The last link of a store's chain: its epoch, ``n`` and the digest of that event."""

    epoch: str
    n: int
    digest: str


@dataclass(frozen=True)
class Link:
    """The chain member given to an event about to be inserted."""

    epoch: str
    n: int
    prev: str


def event_digest(event_id: str, seq: int, event_type: str, ts: str, data: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of an event's canonical form, the value its successor's ``prev`` holds."""
    return hashlib.sha256(
        canonical({"id": event_id, "seq": seq, "type": event_type, "ts": ts, "data": data})
    ).hexdigest()


def read_head(conn: sqlite3.Connection) -> ChainHead | None:
    """The chain head recorded in ``meta``, or None before the first chained event."""
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (META_HEAD,)).fetchone()
    if row is None:
        return None
    try:
        head = json.loads(row[0])
        return ChainHead(str(head["epoch"]), int(head["n"]), str(head["digest"]))
    except (TypeError, ValueError, KeyError):
        # Never a reason to refuse a rating: go on from the newest chained event still stored.
        log.error("the rating chain's head in meta is unreadable (%r); going on from the newest chained event", row[0])
        return _head_from_events(conn)


def _head_from_events(conn: sqlite3.Connection) -> ChainHead | None:
    types = sorted(CHAINED_TYPES)
    row = conn.execute(
        f"SELECT seq, id, type, ts, data FROM events WHERE type IN ({','.join('?' * len(types))}) "
        "ORDER BY seq DESC LIMIT 1",
        types,
    ).fetchone()
    if row is None:
        return None
    seq, event_id, event_type, ts, data_json = row
    try:
        data = json.loads(data_json)
        member = data["chain"]
        return ChainHead(str(member["epoch"]), int(member["n"]), event_digest(event_id, seq, event_type, ts, data))
    except (TypeError, ValueError, KeyError):
        # Nothing to go on from: the chain starts again, and the collector sees its positions twice.
        return None


def _epoch(conn: sqlite3.Connection) -> str:
    row = conn.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
    if row is None:
        raise sqlite3.IntegrityError("the event store has no epoch")
    return str(row[0])


def link(conn: sqlite3.Connection, data_json: str) -> tuple[str, Link]:
    """``data_json`` with the store's next link put in, and that link. Call inside the inserting
    transaction, then :func:`advance` once the event is inserted (its digest needs its seq)."""
    epoch = _epoch(conn)
    head = read_head(conn)
    # No head, or the head of another epoch (the store moved to another machine): a new chain.
    fresh = head is None or head.epoch != epoch
    new = Link(epoch, 1, GENESIS) if head is None or fresh else Link(epoch, head.n + 1, head.digest)
    data = json.loads(data_json)
    # The chain is the store's word, never the caller's: whatever ``chain`` a caller put in is replaced.
    data["chain"] = {"epoch": new.epoch, "n": new.n, "prev": new.prev}
    return compact(data), new


def advance(
    conn: sqlite3.Connection, made: Link, event_id: str, seq: int, event_type: str, ts: str, data_json: str
) -> ChainHead:
    """Record the event just inserted with link ``made`` as the chain head."""
    # Hashed from the stored text read back: exactly what a collector hashes after parsing it.
    head = ChainHead(made.epoch, made.n, event_digest(event_id, seq, event_type, ts, json.loads(data_json)))
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (META_HEAD, compact({"epoch": head.epoch, "n": head.n, "digest": head.digest})),
    )
    return head
