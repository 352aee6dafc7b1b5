"""Where the collector stores events: SQLite (one commune) or PostgreSQL (a province).

Both backends keep the same schema: table ``events``, one row per event ``id`` (a repeat is
ignored, so storage is exactly-once in effect however often a batch is delivered, and to whichever
collector), and table ``chains``, the status of every device's hash chain (DESIGN.md §10). The
collector creates and migrates the schema itself, recording each step in ``schema_version``; a
database made by a newer collector is refused rather than written to.

:meth:`Storage.store` commits before it returns, and only then may the collector acknowledge: an
``evtack`` says "these seqs are stored", which must be true when the device reads it. The chains
are verified as the events are stored, and their statuses are written in the same transaction, so
the ``chains`` table never lags behind or runs ahead of ``events``.

Several collectors may share one database. Each keeps its own :class:`ChainVerifier` as a cache,
and before verifying a device it reads that device's chained events stored since it last looked
(by whichever collector); on PostgreSQL a transaction lock per device, taken before anything of
that device is inserted, makes the devices' arrival order equal their commit order, so no
collector can look past a row another one has yet to commit.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from edge.clock import now_iso
from edge.exceptions import StoreError
from edge.jsonfmt import compact
from edge.messages import EventBatch
from edge.server.chain import CHAINS_SCHEMA, UPSERT_CHAIN, ChainKey, ChainVerifier, chain_rows
from edge.server.db import foreign_scheme, is_postgres_url, without_password
from edge.store.chain import CHAINED_TYPES

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)

#: The events a chain is made of, or sealed by (a ``security`` event closes an epoch's chain).
VERIFIED_TYPES: tuple[str, ...] = (*sorted(CHAINED_TYPES), "security")
#: The same types as SQL literals. The index the chain check reads is partial (only these types), so
#: the bulk of the events (tests, health, presence) costs no index update when stored; a planner uses
#: a partial index only for a query whose WHERE spells out the same condition, hence literals here.
_VERIFIED_SQL = "(" + ", ".join(f"'{t}'" for t in VERIFIED_TYPES) + ")"
#: SQLite's spelling of the same condition. SQLite evaluates an ``IN (...)`` list in a partial
#: index's WHERE by building a small temporary table each time a row is inserted, which made every
#: stored event about 30,000 CPU instructions dearer (valgrind's callgrind, 10,000 test events), far
#: more than the index saves; a chain of ``=`` tests costs about 1,700. The query that reads the
#: index spells it the same way, so that the planner sees the index applies.
_VERIFIED_WHERE = "(" + " OR ".join(f"type = '{t}'" for t in VERIFIED_TYPES) + ")"

_EVENT_COLUMNS = "id, device, commune, epoch, seq, type, priority, ts, clock_synced, data, received_at"

_SQLITE_EVENTS = """
CREATE TABLE IF NOT EXISTS events (
    id           TEXT PRIMARY KEY,
    device       TEXT NOT NULL,
    commune      TEXT NOT NULL,
    epoch        TEXT NOT NULL,
    seq          INTEGER NOT NULL,
    type         TEXT NOT NULL,
    priority     TEXT NOT NULL,
    ts           TEXT NOT NULL,
    clock_synced INTEGER NOT NULL,
    data         TEXT NOT NULL,
    received_at  TEXT NOT NULL
);  -- a rowid table: rowid order is arrival order
CREATE INDEX IF NOT EXISTS events_by_device ON events (commune, device, epoch, seq);
CREATE INDEX IF NOT EXISTS events_by_type ON events (type, ts);
"""

#: Migrations, in order: version N is reached by running the N-th script. Every script may run on
#: a database that already has its tables (one written before ``schema_version`` existed, or by
#: ``edge verify --record``), hence IF NOT EXISTS throughout.
SQLITE_MIGRATIONS: tuple[str, ...] = (
    _SQLITE_EVENTS,
    # A secondary index ends with the rowid, so this one finds a device's rows since a given rowid.
    CHAINS_SCHEMA + "CREATE INDEX IF NOT EXISTS events_by_arrival ON events (commune, device, type);",
    # The chain check's index covers only the chained and sealing types (see _VERIFIED_SQL).
    "DROP INDEX IF EXISTS events_by_arrival;"
    f"CREATE INDEX IF NOT EXISTS events_chained_by_arrival ON events (commune, device) WHERE type IN {_VERIFIED_SQL};",
    # The same index, with its condition spelt as SQLite evaluates cheaply (see _VERIFIED_WHERE).
    "DROP INDEX IF EXISTS events_chained_by_arrival;"
    f"CREATE INDEX IF NOT EXISTS events_chained_by_arrival ON events (commune, device) WHERE {_VERIFIED_WHERE};",
)

#: The same schema on PostgreSQL. ``rowid`` is spelt out (SQLite has it implicitly) so that queries
#: ordering by arrival read alike on both.
POSTGRES_MIGRATIONS: tuple[str, ...] = (
    """
CREATE TABLE IF NOT EXISTS events (
    rowid        BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,  -- arrival order
    id           TEXT PRIMARY KEY,
    device       TEXT NOT NULL,
    commune      TEXT NOT NULL,
    epoch        TEXT NOT NULL,
    seq          INTEGER NOT NULL,
    type         TEXT NOT NULL,
    priority     TEXT NOT NULL,
    ts           TEXT NOT NULL,
    clock_synced INTEGER NOT NULL,
    data         TEXT NOT NULL,
    received_at  TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_device ON events (commune, device, epoch, seq);
CREATE INDEX IF NOT EXISTS events_by_type ON events (type, ts);
""",
    # WITHOUT ROWID is SQLite's storage hint; the table is otherwise the same.
    CHAINS_SCHEMA.replace(") WITHOUT ROWID;", ");")
    + "CREATE INDEX IF NOT EXISTS events_by_arrival ON events (commune, device, type, rowid);",
    "DROP INDEX IF EXISTS events_by_arrival;"
    "CREATE INDEX IF NOT EXISTS events_chained_by_arrival ON events (commune, device, rowid) "
    f"WHERE type IN {_VERIFIED_SQL};",
)

_SCHEMA_VERSION = "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL, applied_at TEXT NOT NULL)"


class StorageError(StoreError):
    """The collector's database failed (the events were not stored, and are not acknowledged)."""


class Storage(Protocol):
    """What the collector stores through."""

    #: Where the events go, for messages (a path, or a URL without its password).
    location: str

    def store(self, batches: Sequence[EventBatch]) -> list[tuple[EventBatch, int]]:
        """Store every event of every batch in one transaction, committed before this returns;
        returns each batch with how many of its events were new. Raises :class:`StorageError`."""
        ...

    def close(self) -> None:
        """Close the database; idempotent."""
        ...


def open_storage(db: str | Path) -> Storage:
    """The backend for ``db``: a ``postgresql://`` URL, or a SQLite file path."""
    if is_postgres_url(db):
        return PostgresStorage(str(db))
    if (scheme := foreign_scheme(db)) is not None:
        raise StorageError(
            f"{scheme}:// is not a database the collector stores into: give a SQLite file or a postgresql:// URL"
        )
    return SqliteStorage(db)


def _rows(batch: EventBatch, received: str) -> list[tuple[Any, ...]]:
    return [
        (
            e.id,
            batch.device,
            batch.commune,
            batch.epoch,
            e.seq,
            e.type,
            e.priority,
            e.ts,
            int(e.clock_synced),
            compact(e.data),
            received,
        )
        for e in batch.events
    ]


class _ChainCache:
    """The collector's verifier, and per device the newest arrival it has read.

    Only the devices whose new events include chained or sealing ones are looked at again.
    """

    def __init__(self) -> None:
        self.verifier = ChainVerifier()
        self.seen: dict[tuple[str, str], int] = {}

    def reset(self) -> None:
        # After a rollback the verifier may hold events that were never committed.
        self.verifier = ChainVerifier()
        self.seen.clear()

    @staticmethod
    def devices(stored: Iterable[tuple[EventBatch, int]]) -> list[tuple[str, str]]:
        """The devices to look at again after storing: new rows that a chain is made of or sealed by."""
        out = {(b.commune, b.device) for b, new in stored if new and any(e.type in VERIFIED_TYPES for e in b.events)}
        return sorted(out)

    def feed(self, device: tuple[str, str], rows: Iterable[Sequence[Any]]) -> set[ChainKey]:
        """Take rows ``(rowid, id, epoch, seq, type, ts, data)`` of one device, in arrival order."""
        commune, name = device
        changed: set[ChainKey] = set()
        last = self.seen.get(device, 0)
        for rowid, event_id, epoch, seq, event_type, ts, data in rows:
            last = max(last, int(rowid))
            try:
                parsed = json.loads(data)
            except (TypeError, ValueError):
                parsed = None
            key = self.verifier.feed_event(
                commune,
                name,
                str(epoch),
                str(event_id),
                int(seq),
                str(event_type),
                str(ts),
                parsed if isinstance(parsed, dict) else None,
            )
            if key is not None:
                changed.add(key)
        self.seen[device] = last
        return changed


class SqliteStorage:
    """The collector's SQLite database (WAL, ``synchronous=FULL``)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.location = str(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._chains = _ChainCache()
        try:
            self.conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=15.0)
            self.conn.execute("PRAGMA journal_mode = WAL")
            self.conn.execute("PRAGMA synchronous = FULL")
            self._migrate()
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open the collector's database {self.path}: {exc}") from exc

    def _migrate(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            self.conn.execute(_SCHEMA_VERSION)
            (version,) = self.conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
            _check_version(self.location, version, len(SQLITE_MIGRATIONS))
            for n, script in enumerate(SQLITE_MIGRATIONS[version:], start=version + 1):
                # executescript would commit the open transaction; run the statements one by one.
                for statement in _statements(script):
                    self.conn.execute(statement)
                self.conn.execute("INSERT INTO schema_version VALUES (?, ?)", (n, now_iso()))
                log.info("%s: schema migrated to version %s", self.location, n)
            self.conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self.conn.execute("ROLLBACK")
            raise

    def store(self, batches: Sequence[EventBatch]) -> list[tuple[EventBatch, int]]:
        """Insert every event of every batch in one transaction; returns new rows per batch."""
        received = now_iso()
        out: list[tuple[EventBatch, int]] = []
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                for batch in batches:
                    before = self.conn.total_changes
                    self.conn.executemany(
                        f"INSERT OR IGNORE INTO events ({_EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        _rows(batch, received),
                    )
                    out.append((batch, self.conn.total_changes - before))
                self._verify(out)
                self.conn.execute("COMMIT")
            except BaseException:
                self._chains.reset()
                with contextlib.suppress(sqlite3.Error):
                    self.conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StorageError(f"{self.location}: {exc}") from exc
        return out

    def _verify(self, stored: list[tuple[EventBatch, int]]) -> None:
        changed: set[ChainKey] = set()
        for device in self._chains.devices(stored):
            rows = self.conn.execute(
                f"SELECT rowid, id, epoch, seq, type, ts, data FROM events WHERE commune = ? AND device = ? "
                f"AND {_VERIFIED_WHERE} AND rowid > ? ORDER BY rowid",
                (*device, self._chains.seen.get(device, 0)),
            )
            changed |= self._chains.feed(device, rows)
        if changed:
            self.conn.executemany(UPSERT_CHAIN, chain_rows(self._chains.verifier.statuses(changed)))

    def close(self) -> None:
        self.conn.close()


class PostgresStorage:
    """The collector's PostgreSQL database, through psycopg 3 (``postgresql://user@host/db``)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.location = without_password(url)
        self._chains = _ChainCache()
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = None
        self._closed = False
        conn = self._connection()
        try:
            with conn.transaction():
                # Two collectors starting at once must not both migrate.
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_key("schema"),))
                conn.execute(_SCHEMA_VERSION)
                row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
                version = int(row[0]) if row else 0
                _check_version(self.location, version, len(POSTGRES_MIGRATIONS))
                for n, script in enumerate(POSTGRES_MIGRATIONS[version:], start=version + 1):
                    for statement in _statements(script):
                        conn.execute(statement)
                    conn.execute("INSERT INTO schema_version VALUES (%s, %s)", (n, now_iso()))
                    log.info("%s: schema migrated to version %s", self.location, n)
        except _pg_errors() as exc:
            raise StorageError(f"cannot prepare the collector's database {self.location}: {exc}") from exc

    def _connection(self) -> psycopg.Connection[tuple[Any, ...]]:
        import psycopg

        if self._conn is not None and not self._conn.broken and not self._conn.closed:
            return self._conn
        if self._closed:
            raise StorageError(f"{self.location} is closed")
        try:
            self._conn = psycopg.connect(self.url, autocommit=True, connect_timeout=10)
        except psycopg.Error as exc:
            raise StorageError(f"cannot connect to {self.location}: {exc}") from exc
        return self._conn

    def store(self, batches: Sequence[EventBatch]) -> list[tuple[EventBatch, int]]:
        """Insert every event of every batch in one transaction; returns new rows per batch."""
        received = now_iso()
        out: list[tuple[EventBatch, int]] = []
        conn = self._connection()
        try:
            with conn.transaction():
                # Per device, in one order for every collector (so two of them never deadlock):
                # arrival order then equals commit order for that device's rows, see the module's doc.
                for device in sorted({(b.commune, b.device) for b in batches}):
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_key("device", *device),))
                for batch in batches:
                    rows = _rows(batch, received)
                    values = ", ".join(["(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"] * len(rows))
                    cur = conn.execute(
                        f"INSERT INTO events ({_EVENT_COLUMNS}) VALUES {values} "
                        "ON CONFLICT (id) DO NOTHING RETURNING id",
                        [v for row in rows for v in row],
                    )
                    out.append((batch, len(cur.fetchall())))
                self._verify(conn, out)
        except BaseException as exc:
            self._chains.reset()
            if isinstance(exc, _pg_errors()):
                raise StorageError(f"{self.location}: {exc}") from exc
            raise
        return out

    def _verify(self, conn: psycopg.Connection[tuple[Any, ...]], stored: list[tuple[EventBatch, int]]) -> None:
        changed: set[ChainKey] = set()
        for device in self._chains.devices(stored):
            rows = conn.execute(
                "SELECT rowid, id, epoch, seq, type, ts, data FROM events WHERE commune = %s AND device = %s "
                f"AND type IN {_VERIFIED_SQL} AND rowid > %s ORDER BY rowid",
                (*device, self._chains.seen.get(device, 0)),
            ).fetchall()
            changed |= self._chains.feed(device, rows)
        if changed:
            with conn.cursor() as cur:
                cur.executemany(UPSERT_CHAIN.replace("?", "%s"), chain_rows(self._chains.verifier.statuses(changed)))

    def close(self) -> None:
        self._closed = True
        if self._conn is not None:
            self._conn.close()


def _pg_errors() -> tuple[type[BaseException], ...]:
    import psycopg

    return (psycopg.Error,)


def _lock_key(*parts: str) -> int:
    """A 32-bit advisory lock id for ``parts`` (a collision only makes two devices wait on each other)."""
    return zlib.crc32("\x1f".join(("commune-edge", *parts)).encode()) - 2**31


def _statements(script: str) -> list[str]:
    """The statements of a migration script (ours: no ``;`` inside a statement, comments per line)."""
    lines = [line.split("--", 1)[0] for line in script.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def _check_version(location: str, version: int, known: int) -> None:
    if version > known:
        raise StorageError(
            f"{location} has schema version {version}, newer than this collector's {known}: "
            "run the collector version that made it"
        )
