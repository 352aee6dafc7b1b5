"""Reading the collector's database (table ``events``, as ``edge collect`` writes it), SQLite or
PostgreSQL, through one interface: :func:`open_db` gives a :class:`CollectorDb`.

Everything opens the database read-only unless asked otherwise: a report or a verification may
run next to collectors that are storing, and must never change what they stored. A SQLite file is
opened with ``mode=ro``; on PostgreSQL the session has ``default_transaction_read_only`` on, so the
server itself refuses any write, and all the reading is one repeatable-read transaction, so a
report's figures and its chain statuses come from one snapshot however much is stored meanwhile.

The SQL is shared (both dialects have the same schema, :mod:`edge.server.storage`): statements are
written with ``?`` placeholders, which become ``%s`` on PostgreSQL.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import re
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import TracebackType
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from edge.exceptions import EdgeError

log = logging.getLogger(__name__)

#: Vietnam's time (UTC+7, no daylight saving): a month of the report is a calendar month here.
VIETNAM = timezone(timedelta(hours=7), "ICT")

Dialect = Literal["sqlite", "postgresql"]

POSTGRES_SCHEMES = ("postgresql://", "postgres://")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_COLUMNS = "rowid, id, device, commune, epoch, seq, type, priority, ts, clock_synced, data, received_at"
#: How ``ts`` compares as text: byte order. PostgreSQL would otherwise use the database's locale,
#: whose collation may weigh punctuation differently from SQLite's byte order.
_TEXT_ORDER: dict[Dialect, str] = {"sqlite": "", "postgresql": ' COLLATE "C"'}
#: Rows a PostgreSQL cursor fetches at a time: a month of a province's events is streamed, not loaded.
_FETCH_ROWS = 5000
_cursor_names = itertools.count(1)


class CollectorDbError(EdgeError, ValueError):
    """The collector's database is missing, unreachable, or is not one."""


def is_postgres_url(db: str | Path) -> bool:
    """Whether ``db`` names a PostgreSQL database (``postgresql://`` or ``postgres://``) rather than a file."""
    return str(db).startswith(POSTGRES_SCHEMES)


def foreign_scheme(db: str | Path) -> str | None:
    """The scheme of ``db`` if it is a URL of something other than PostgreSQL (``mysql://...``),
    which must be refused rather than taken for the name of a SQLite file; None otherwise."""
    text = str(db)
    if is_postgres_url(text) or not _URL.match(text):
        return None
    return text.split("://", 1)[0]


def without_password(url: str) -> str:
    """``url`` with its password, if any, written as ``***``: what messages and logs may show."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
    except ValueError:
        return "the database URL given"  # unreadable: better unnamed than shown with its password
    # The host and port as written: a port that is not a number is for the connection to refuse.
    user, host = parts.netloc.rsplit("@", 1)
    return urlunsplit(parts._replace(netloc=f"{user.split(':', 1)[0]}:***@{host}"))


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


def _row(r: Sequence[Any]) -> Row:
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


class CollectorDb:
    """The collector's database, as :func:`open_db` opened it. A context manager; ``close()`` is idempotent."""

    def __init__(self, conn: Any, dialect: Dialect, location: str, *, writable: bool = False) -> None:
        self._conn = conn
        self.dialect: Dialect = dialect
        #: The file, or the URL without its password: what messages name.
        self.location = location
        self.writable = writable
        self._closed = False

    def __enter__(self) -> CollectorDb:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.dialect == "postgresql" else sql

    def _error(self, exc: Exception) -> CollectorDbError:
        return CollectorDbError(f"cannot read {self.location}: {_one_line(exc)}")

    def query(self, sql: str, params: Sequence[Any] = ()) -> Iterator[tuple[Any, ...]]:
        """The rows of one statement (``?`` placeholders), streamed."""
        try:
            if self.dialect == "sqlite":
                for r in self._conn.execute(sql, params):
                    yield tuple(r)
                return
            # A server-side cursor, so that a month of a province is not held in memory at once.
            with self._conn.cursor(name=f"edge_read_{next(_cursor_names)}") as cur:
                cur.itersize = _FETCH_ROWS
                cur.execute(self._sql(sql), params)
                for r in cur:
                    yield tuple(r)
        except _db_errors() as exc:
            raise self._error(exc) from exc

    def events(
        self,
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
            ts = "ts" + _TEXT_ORDER[self.dialect]
            where.append(f"{ts} >= ? AND {ts} < ?")
            params += [(start - timedelta(days=1)).date().isoformat(), (end + timedelta(days=1)).date().isoformat()]
        sql = f"SELECT {_COLUMNS} FROM events WHERE {' AND '.join(where)} ORDER BY rowid"
        for r in self.query(sql, params):
            yield _row(r)

    def devices(self, commune: str | None = None) -> list[tuple[str, str]]:
        """Every ``(commune, device)`` that has stored events, sorted."""
        if commune is None:
            rows = self.query("SELECT DISTINCT commune, device FROM events ORDER BY commune, device")
        else:
            rows = self.query(
                "SELECT DISTINCT commune, device FROM events WHERE commune = ? ORDER BY device", (commune,)
            )
        return [(str(c), str(d)) for c, d in rows]

    def write(self, statements: Iterable[tuple[str, Sequence[Sequence[Any]] | None]]) -> None:
        """Run ``(sql, rows)`` pairs in one transaction: each statement once per row of ``rows``, or
        once without parameters when ``rows`` is None. Only on a database opened with ``write=True``."""
        if not self.writable:
            raise CollectorDbError(f"{self.location} is open read-only")
        try:
            if self.dialect == "sqlite":
                with self._conn:
                    for sql, rows in statements:
                        self._run(self._conn, sql, rows)
                return
            # End the reading transaction, if one is open: the write's must be the outermost to commit.
            self._conn.commit()
            with self._conn.transaction(), self._conn.cursor() as cur:
                for sql, rows in statements:
                    self._run(cur, self._sql(sql), rows)
        except _db_errors() as exc:
            raise CollectorDbError(f"cannot write to {self.location}: {_one_line(exc)}") from exc

    @staticmethod
    def _run(target: Any, sql: str, rows: Sequence[Sequence[Any]] | None) -> None:
        if rows is None:
            target.execute(sql)
        elif rows:
            target.executemany(sql, rows)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(*_db_errors()):
            self._conn.close()


def open_db(db: str | Path, *, write: bool = False) -> CollectorDb:
    """The collector's database: a SQLite file path, or a ``postgresql://USER[:PASS]@HOST[:PORT]/DB`` URL.

    Read-only unless ``write``. Raises :class:`CollectorDbError`, in words a person can act on, for
    a URL that is not one, a server that does not answer, or a database without the collector's
    ``events`` table.
    """
    text = str(db)
    if is_postgres_url(text):
        return _open_postgres(text, write)
    if (scheme := foreign_scheme(text)) is not None:
        raise CollectorDbError(
            f"{scheme}:// is not a database edge reads: give the collector's SQLite file, or a postgresql:// URL"
        )
    return _open_sqlite(Path(db), write)


def _no_events(location: str) -> CollectorDbError:
    return CollectorDbError(f"{location} has no events table; is it a collector database (edge collect --db)?")


def _open_sqlite(db: Path, write: bool) -> CollectorDb:
    if not db.is_file():
        raise CollectorDbError(f"no collector database at {db}")
    try:
        if write:
            conn = sqlite3.connect(db, timeout=15.0)
        else:
            conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=15.0)
        conn.execute("PRAGMA busy_timeout = 15000")
        found = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'events'").fetchone()
    except sqlite3.Error as exc:
        raise CollectorDbError(f"cannot read {db}: {exc}") from exc
    if found is None:
        conn.close()
        raise _no_events(str(db))
    return CollectorDb(conn, "sqlite", str(db), writable=write)


def _open_postgres(url: str, write: bool) -> CollectorDb:
    location = without_password(url)
    try:
        import psycopg
        from psycopg.conninfo import make_conninfo
    except ImportError:
        raise CollectorDbError("reading PostgreSQL needs psycopg: pip install 'commune-edge[server]'") from None
    try:
        # Read-only in the server's own terms: every transaction of the session refuses to write.
        conninfo = make_conninfo(url) if write else make_conninfo(url, options="-c default_transaction_read_only=on")
    except psycopg.Error as exc:
        raise CollectorDbError(f"{location} is not a PostgreSQL URL edge can use: {_one_line(exc)}") from None
    try:
        conn = psycopg.connect(conninfo, connect_timeout=10)
    except psycopg.Error as exc:
        raise CollectorDbError(f"cannot connect to {location}: {_one_line(exc)}") from None
    try:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        row = conn.execute("SELECT to_regclass('events') IS NOT NULL").fetchone()
    except psycopg.Error as exc:
        conn.close()
        raise CollectorDbError(f"cannot read {location}: {_one_line(exc)}") from None
    if not (row and row[0]):
        conn.close()
        raise _no_events(location)
    return CollectorDb(conn, "postgresql", location, writable=write)


def _db_errors() -> tuple[type[Exception], ...]:
    """What either driver raises (psycopg only when it is installed: it is the server extra's)."""
    try:
        import psycopg
    except ImportError:
        return (sqlite3.Error,)
    return (sqlite3.Error, psycopg.Error)


def _one_line(exc: BaseException) -> str:
    """libpq's messages run over several lines (a hint on the second): one line, for a CLI's error."""
    return " ".join(str(exc).split())
