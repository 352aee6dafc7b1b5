"""The device's event outbox: SQLite in WAL mode, durable first, then acknowledged.

Every event is committed here before anything else happens with it: before the citizen sees the
thank-you light, before a command is acknowledged, before it is published. An event leaves the
outbox's pending set only when the collector's ``evtack`` covers it.

All writes of one process go through a single writer thread (one connection), which groups the
requests waiting at that moment into one transaction ("group commit"). That keeps SQLite's write
lock uncontended inside the process, so a critical append is never stuck behind SQLite's busy
back-off. Other processes (``edge emit`` while ``edge run`` runs) are ordinary SQLite writers;
after a commit they poke the daemon through a datagram socket in the state directory so it does
not have to poll.

One process owns the store: ``edge run`` opens it with ``owner=True``, which takes the state
directory's lock (or is given it, :mod:`edge.store.opening`), binds the store to the machine, and is
the only opener that may move a corrupt file aside. ``edge emit`` appends next to it; ``edge status``
and ``edge events`` only read (:meth:`Outbox.open_readonly`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from queue import Empty, SimpleQueue
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from edge.clock import ClockMonitor, now_iso
from edge.exceptions import EventTooLarge, StoreCorrupt, StoreError, StoreFull
from edge.ids import new_id
from edge.jsonfmt import compact
from edge.store import chain, formats
from edge.store.host import DaemonLock, TimeSource, fingerprint, machine_identity, private_dir, private_file
from edge.store.salvage import Salvage, salvage

if TYPE_CHECKING:
    from edge.config import EdgeConfig

log = logging.getLogger(__name__)

Priority = Literal["critical", "normal", "bulk"]
PRIORITIES: tuple[Priority, ...] = ("critical", "normal", "bulk")
_PRIORITY_CODE: dict[str, int] = {"critical": 0, "normal": 1, "bulk": 2}

#: The priority an event type gets when the caller does not say (DESIGN.md §3: ratings, proof of
#: play, tamper and security are never evicted).
DEFAULT_PRIORITY: dict[str, Priority] = {
    "rating": "critical",
    "broadcast": "critical",
    "tamper": "critical",
    "security": "critical",
    "evidence": "critical",
    "ack": "critical",
    "cfg_reported": "critical",
    "panel": "normal",
    "presence": "normal",
    "test": "normal",
    "health": "bulk",
}

WAKE_SOCKET = "wake.sock"
_GROUP_MAX = 512

#: The largest event ``data`` (as JSON, in bytes) a store accepts by default. An event's envelope in
#: a batch adds under 400 bytes, so a batch carrying one event this large stays under 64 KiB, the
#: smallest packet limit met in practice (a broker's ``max_packet_size 65536``; the device's own
#: ``mqtt.max_incoming_bytes``). An event that no broker will take must be refused at append: stored,
#: it would sit at the head of the queue and hold back every event behind it.
DEFAULT_MAX_EVENT_BYTES = 60 * 1024
#: How long a caller waits for the writer thread before the store gives up on the request.
WAIT_TIMEOUT_S = 60.0
#: How long a process that is not the daemon waits for ``edge run`` to move a corrupt file aside.
CORRUPT_WAIT_S = 15.0
_TYPE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_.-")
#: ``meta`` key of the last time the disk was full: since, until, refused (JSON).
META_DISK_FULL = "disk_full_last"
#: How many acknowledgement ranges a store holds in memory while the disk is full.
MAX_HELD_ACK_SPANS = 10_000
#: How many dedupe keys of refused events a store remembers, to count a repeated one once.
MAX_REFUSED_KEYS = 10_000
#: How many other writes (events set aside...) a store holds in memory while the disk is full.
MAX_HELD_WRITES = 1000
#: Free space under which an I/O error in growing SQLite's files is taken for a full disk: a WAL
#: database needs 32 KiB of ``-shm`` and a few pages of WAL before it can commit anything.
NO_ROOM_BYTES = 1 << 20
#: SQLite's I/O errors (extended codes) in allocating space for its files.
_ROOM_IOERRS = frozenset(
    {
        sqlite3.SQLITE_IOERR_SHMSIZE,
        sqlite3.SQLITE_IOERR_SHMOPEN,
        sqlite3.SQLITE_IOERR_WRITE,
        sqlite3.SQLITE_IOERR_TRUNCATE,
        sqlite3.SQLITE_IOERR_FSYNC,
    }
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,  -- AUTOINCREMENT: a seq is never reused
    id           TEXT    NOT NULL,
    type         TEXT    NOT NULL,
    priority     INTEGER NOT NULL,                   -- 0 critical, 1 normal, 2 bulk
    ts           TEXT    NOT NULL,
    clock_synced INTEGER NOT NULL,
    data         TEXT    NOT NULL,                   -- JSON text, sent as is
    acked_at     REAL                                -- NULL while pending
);
CREATE INDEX IF NOT EXISTS events_pending ON events (seq) WHERE acked_at IS NULL;
CREATE INDEX IF NOT EXISTS events_evictable ON events (priority, seq) WHERE acked_at IS NULL;
CREATE INDEX IF NOT EXISTS events_acked ON events (acked_at) WHERE acked_at IS NOT NULL;
-- A dedupe key lives until ``live_until`` on the boot clock of ``boot`` (see _rebase_dedupe);
-- ``expires`` is the same moment on the wall clock, for people reading the table.
CREATE TABLE IF NOT EXISTS dedupe (
    key        TEXT PRIMARY KEY,
    id         TEXT NOT NULL,
    seq        INTEGER NOT NULL,                     -- 0: the event is not in this store (recovered key)
    expires    REAL NOT NULL,
    boot       TEXT,
    live_until REAL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
-- Signed commands seen (the replay set) and their outcome; kept until they expire.
CREATE TABLE IF NOT EXISTS commands (
    cmd_id   TEXT PRIMARY KEY,
    name     TEXT NOT NULL,
    exp      REAL NOT NULL,                          -- the command's exp (Unix seconds)
    state    TEXT NOT NULL,                          -- accepted|in_progress|succeeded|failed|rejected
    reason   TEXT,
    result   TEXT,                                   -- JSON
    updated  REAL NOT NULL
) WITHOUT ROWID;
-- Replies (ack, cfg/reported) waiting for the broker's PUBACK; sent in id order.
CREATE TABLE IF NOT EXISTS replies (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    topic    TEXT NOT NULL,                          -- after the device prefix: ack, cfg/reported
    payload  BLOB NOT NULL,
    retain   INTEGER NOT NULL
);
"""

T = TypeVar("T")
#: An event ready to insert: id, type, priority code, ts, clock_synced, data JSON, dedupe key, TTL.
_Row = tuple[str, str, int, str, int, str, str | None, float]


@dataclass(frozen=True)
class Committed:
    """An event that is on disk. ``duplicate`` is true when its dedupe key had been seen before
    and the earlier event is returned instead of a new one."""

    id: str
    seq: int
    duplicate: bool = False


@dataclass(frozen=True)
class StoredEvent:
    """One event as stored."""

    seq: int
    id: str
    type: str
    priority: Priority
    ts: str
    clock_synced: bool
    data_json: str
    acked_at: float | None = None

    @property
    def data(self) -> Any:
        return json.loads(self.data_json)

    def wire_json(self) -> str:
        """The event as it appears in a batch. ``data`` is already JSON and is embedded as is;
        id, type, priority and ts are checked at append so they need no escaping."""
        return (
            f'{{"id":"{self.id}","seq":{self.seq},"type":"{self.type}","priority":"{self.priority}",'
            f'"ts":"{self.ts}","clock_synced":{"true" if self.clock_synced else "false"},'
            f'"data":{self.data_json}}}'
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "seq": self.seq,
            "type": self.type,
            "priority": self.priority,
            "ts": self.ts,
            "clock_synced": self.clock_synced,
            "data": self.data,
            "state": "pending" if self.acked_at is None else "acked",
        }


@dataclass(frozen=True)
class StoreStats:
    """The figures ``edge status`` shows about the store."""

    epoch: str
    depth: int
    depth_by_priority: dict[str, int]
    oldest_pending_ts: str | None
    last_seq: int
    db_bytes: int
    max_bytes: int
    evictions: dict[str, int]
    counters: dict[str, int]

    @property
    def oldest_pending_age_s(self) -> float | None:
        if self.oldest_pending_ts is None:
            return None
        then = datetime.fromisoformat(self.oldest_pending_ts)
        return max(0.0, (datetime.now(then.tzinfo) - then).total_seconds())


@dataclass(frozen=True)
class NewEvent:
    """An event to append (see :meth:`Outbox.append` for the fields)."""

    type: str
    data: Mapping[str, Any]
    priority: Priority | None = None
    dedupe_key: str | None = None
    dedupe_ttl_s: float = 7 * 86400


@dataclass
class _Op:
    fn: Callable[[sqlite3.Connection], Any]
    durable: bool
    future: Future[Any]
    appends: bool
    txn: bool = True
    #: The dedupe key (or None) of each event the request appends.
    keys: tuple[str | None, ...] = ()


def _merge_spans(spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Inclusive ranges, sorted, with overlapping and adjacent ones joined."""
    out: list[tuple[int, int]] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def free_bytes(path: Path) -> int | None:
    """The bytes this process may still write on the file system holding ``path`` (None if unknown)."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def _check_type(event_type: str) -> None:
    if not event_type or len(event_type) > 64 or not set(event_type) <= _TYPE_CHARS:
        raise ValueError(f"event type must be lower-case letters, digits, '_', '.', '-': {event_type!r}")


def ranges_of(seqs: Iterable[int]) -> list[tuple[int, int]]:
    """Compress sequence numbers into inclusive ``(from, to)`` ranges, as in ``evtack``."""
    out: list[tuple[int, int]] = []
    for s in sorted(seqs):
        if out and s == out[-1][1] + 1:
            out[-1] = (out[-1][0], s)
        else:
            out.append((s, s))
    return out


def _primary_code(exc: BaseException) -> int | None:
    """SQLite's primary result code of ``exc``. Python 3.11 reports extended codes
    (``SQLITE_IOERR_WRITE``, ``SQLITE_BUSY_RECOVERY``...), whose low byte is the primary code."""
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else int(code) & 0xFF


def _is_corruption(exc: BaseException) -> bool:
    """Only a damaged file is corruption; I/O errors, read-only files, locks and permissions are not."""
    return _primary_code(exc) in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


def _no_room(state_dir: Path | None) -> bool:
    """Whether the disk holding ``state_dir`` has next to no room left for this process (or no inode)."""
    if state_dir is None:
        return False
    try:
        st = os.statvfs(state_dir)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < NO_ROOM_BYTES or (st.f_files > 0 and st.f_favail == 0)


def _translate(exc: sqlite3.Error, state_dir: Path | None = None) -> StoreError:
    code = _primary_code(exc)
    extended = getattr(exc, "sqlite_errorcode", None)
    # SQLite reports ENOSPC as SQLITE_FULL only where it looks at errno (writing pages); growing
    # the -shm file, creating it or a WAL, is an I/O error whatever the reason. With the disk out
    # of room, that reason is the full disk.
    if code == sqlite3.SQLITE_FULL or (
        (extended in _ROOM_IOERRS or code == sqlite3.SQLITE_CANTOPEN) and _no_room(state_dir)
    ):
        where = f"the disk holding {state_dir}" if state_dir is not None else "the disk"
        return StoreFull(f"disk full, nothing was written ({exc}): free space on {where}")
    if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
        return StoreCorrupt(f"event store is corrupt: {exc}")
    return StoreError(f"event store error: {exc} ({getattr(exc, 'sqlite_errorname', 'no code')})")


def _open_error(path: Path, exc: sqlite3.Error) -> StoreError:
    """An error opening the store that is not corruption, naming the file."""
    err = _translate(exc, path.parent)
    return type(err)(f"cannot open the event store {path}: {err}")


def max_event_bytes_for(config: EdgeConfig) -> int:
    """The event size cap for a device: below ``sync.batch_max_bytes`` and never above
    :data:`DEFAULT_MAX_EVENT_BYTES`, so one event always fits in a batch the broker accepts."""
    return min(config.sync.batch_max_bytes, DEFAULT_MAX_EVENT_BYTES)


def _chain_seal(head: chain.ChainHead | None, epoch: str | None) -> dict[str, Any] | None:
    """The last link of epoch ``epoch``'s chain as a ``security`` event reports it, if there is one."""
    if head is None or head.epoch != epoch:
        return None
    return {"epoch": head.epoch, "n": head.n, "digest": head.digest}


def _upsert_meta(conn: sqlite3.Connection, key: str, value: str) -> None:
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, value),
    )


class Outbox:
    """The durable event queue of one device. Thread-safe; use as a context manager.

    ``owner`` is for the daemon: it takes ``daemon.lock`` in the state directory (a second
    ``edge run`` fails with a clear error), binds the store to this machine and ``device_id``
    (``machine_id`` overrides what is read from the system), tightens the modes of existing files,
    and moves a corrupt database aside, copying what it can still read into the new one. Any other
    process that finds the file corrupt waits a little for the daemon to do that, then gives up.
    ``lock`` is a :class:`DaemonLock` the owner already holds (it then belongs to the store, which
    releases it on :meth:`close`, but not when opening fails: the caller may try again with it).

    ``timestamp`` gives each event's ``ts`` (local time with its UTC offset, as the contract has
    it): the wall clock, unless a simulator replays another time. ``rating`` and ``broadcast``
    events are chained as they are inserted (:mod:`edge.store.chain`).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_bytes: int = 512 * 1024 * 1024,
        keep_acked_s: float = 86400,
        clock: ClockMonitor | None = None,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        owner: bool = False,
        device_id: str | None = None,
        machine_id: str | None = None,
        time_source: TimeSource | None = None,
        readonly: bool = False,
        timestamp: Callable[[], str] = now_iso,
        lock: DaemonLock | None = None,
    ) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.keep_acked_s = keep_acked_s
        self.max_event_bytes = max_event_bytes
        self.clock = clock or ClockMonitor()
        self.time = time_source or TimeSource()
        self.timestamp = timestamp
        self.owner = owner and not readonly
        self.readonly = readonly
        self.device_id = device_id
        #: Set when this start moved a corrupt database aside: where it went, and what was read from it.
        self.quarantined: Path | None = None
        self.salvaged: Salvage | None = None
        #: Set when this start found the store bound to another machine or device id.
        self.moved: dict[str, Any] | None = None
        self.wait_timeout_s = WAIT_TIMEOUT_S
        self._identity = machine_id if machine_id is not None else machine_identity()
        self._listeners: list[Callable[[int], None]] = []
        self._queue: SimpleQueue[_Op | None] = SimpleQueue()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._closed = False
        self._writer_stopped: str | None = None
        self._thread: threading.Thread | None = None
        self._lock: DaemonLock | None = None
        self._wake_sock: socket.socket | None = None
        self._over_cap_warned = False
        self._cap_failing = False
        #: While the disk is full (written by the writer thread only): since when, events refused.
        self._full: dict[str, Any] | None = None
        #: What could not be written for lack of space, kept for the next commit (under _state_lock):
        #: acknowledgements, counts, meta values, other writes (with what to do once committed).
        self._held_acks: list[tuple[int, int]] = []
        self._held_counts: dict[str, int] = {}
        self._held_meta: dict[str, str] = {}
        self._held_writes: list[tuple[Callable[[sqlite3.Connection], Any], Callable[[Any], None] | None]] = []
        self._holding = False
        #: The parts of daemon.lock's note besides the full disk (the link state), and a lock so that
        #: threads writing the note do not interleave.
        self._note_parts: dict[str, Any] = {}
        self._note_lock = threading.Lock()
        self._refused_keys: set[str] = set()
        self._appended_bytes = 0
        self._size_checked_at = 0.0
        self._owns_wake_socket = False
        self._sync_mode = "FULL"

        if readonly:
            if not self.path.is_file():
                raise StoreError(f"no event store at {self.path} yet (edge run or edge emit creates it)")
            try:
                self.epoch: str = self.get_meta("epoch") or ""
            except BaseException:
                self.close()
                raise
            return

        private_dir(self.path.parent, tighten=self.owner)
        try:
            if self.owner:
                self._lock = lock if lock is not None else DaemonLock(self.path.parent)
            private_file(self.path, tighten=self.owner)
            self._writer_conn = self._open_writer()
            self.epoch = self._init_meta()
            self._write_note()  # what the last daemon's note said is in the store now
        except BaseException:
            if self._lock is not None and self._lock is not lock:
                self._lock.release()
            self._lock = None
            raise
        self._wake_sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._wake_sock.setblocking(False)
        self._thread = threading.Thread(target=self._writer_loop, name="outbox-writer", daemon=True)
        self._thread.start()
        try:
            if self.quarantined is not None:
                self._report_quarantine()
            if self.moved is not None:
                self.bump("store_moves")
                self.append("security", {"kind": "store_moved", **self.moved}, "critical")
        except BaseException:
            if lock is not None:
                self._lock = None  # the caller's, to try again with
            self.close()
            raise

    @classmethod
    def from_config(cls, config: EdgeConfig, *, owner: bool = False, lock: DaemonLock | None = None) -> Outbox:
        """The store of the device ``config`` describes (``owner=True`` for ``edge run``)."""
        return cls(
            config.db_path,
            max_bytes=config.store.max_bytes,
            keep_acked_s=config.store.keep_acked_s,
            max_event_bytes=max_event_bytes_for(config),
            owner=owner,
            device_id=config.device.id,
            lock=lock,
        )

    @classmethod
    def open_readonly(cls, path: str | os.PathLike[str], *, max_bytes: int = 512 * 1024 * 1024) -> Outbox:
        """The store at ``path`` for reading only (``edge status``, ``edge events``): never creates
        the file, never writes to it, never moves it aside, binds no socket, starts no thread."""
        return cls(path, max_bytes=max_bytes, readonly=True)

    # -- opening, integrity and quarantine ------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        try:
            if self.readonly:
                conn = sqlite3.connect(
                    f"{self.path.resolve().as_uri()}?mode=ro",
                    uri=True,
                    isolation_level=None,
                    check_same_thread=False,
                    timeout=15.0,
                )
            else:
                conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=15.0)
            conn.execute("PRAGMA busy_timeout = 15000")
        except sqlite3.Error as exc:
            raise _open_error(self.path, exc) from exc
        return conn

    def _open_writer(self) -> sqlite3.Connection:
        """The writer connection, after moving a corrupt file aside (owner) or waiting for the
        daemon to do so (anyone else)."""
        try:
            return self._open_checked()
        except StoreCorrupt as exc:
            if not self.owner:
                return self._wait_for_repair(exc)
            problem = exc
        self.quarantined = self._quarantine()
        log.error("event store %s was corrupt (%s); moved aside to %s", self.path, problem, self.quarantined)
        private_file(self.path, tighten=True)
        conn = self._open_checked()
        self.salvaged = salvage(self.quarantined, _check_type)
        return conn

    def _wait_for_repair(self, exc: StoreCorrupt) -> sqlite3.Connection:
        # ``edge emit`` started next to an ``edge run`` that is still starting: the daemon moves the
        # file aside within moments. Two processes renaming one file would be worse than waiting.
        log.warning("event store %s is corrupt (%s); waiting for edge run to move it aside", self.path, exc)
        deadline = time.monotonic() + CORRUPT_WAIT_S
        while time.monotonic() < deadline:
            time.sleep(0.25)
            try:
                private_file(self.path, tighten=False)
                return self._open_checked()
            except StoreCorrupt as again:
                exc = again
        raise StoreCorrupt(f"{exc}; edge run moves a corrupt store aside when it starts") from exc

    def _open_checked(self) -> sqlite3.Connection:
        conn = self._connect()
        try:
            # auto_vacuum must be chosen before the first table exists; it lets evictions give
            # space back to the file system, so the byte cap measures what is really used.
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                # A read-only file or directory: trouble, but the file is not damaged.
                raise StoreError(f"cannot switch {self.path} to WAL (mode {mode}); is it writable?")
            conn.execute("PRAGMA synchronous = FULL")
            # Keep the WAL small next to the cap: it counts against it and is reused, not shrunk,
            # between checkpoints.
            wal_pages = max(32, min(1000, self.max_bytes // 4096 // 10))
            conn.execute(f"PRAGMA wal_autocheckpoint = {wal_pages}")
            conn.execute(f"PRAGMA journal_size_limit = {wal_pages * 4096 * 2}")
            check = conn.execute("PRAGMA quick_check").fetchall()
            if check != [("ok",)]:
                raise StoreCorrupt("; ".join(str(r[0]) for r in check[:3]))
            conn.executescript(_SCHEMA)
            formats.check_store(conn, self.path)  # a store from a newer version is refused, never migrated
            self._migrate(conn)
        except sqlite3.Error as exc:
            conn.close()
            if _is_corruption(exc):
                raise StoreCorrupt(f"event store is corrupt: {exc}") from exc
            # I/O errors, read-only files, BUSY_RECOVERY, CANTOPEN, permissions: the file stays
            # where it is and the caller hears why (the daemon exits; systemd tries again).
            raise _open_error(self.path, exc) from exc
        except StoreError:
            conn.close()
            raise
        self._sync_mode = "FULL"
        return conn

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        """Bring a store written by an earlier version up to the current schema."""
        columns = {r[1] for r in conn.execute("PRAGMA table_info(dedupe)")}
        if {"boot", "live_until"} <= columns:
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Read again under the write lock: another process may have just done it.
            columns = {r[1] for r in conn.execute("PRAGMA table_info(dedupe)")}
            for name, kind in (("boot", "TEXT"), ("live_until", "REAL")):
                if name not in columns:
                    conn.execute(f"ALTER TABLE dedupe ADD COLUMN {name} {kind}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _quarantine(self) -> Path:
        """Rename the corrupt database (and its WAL and shared-memory files) aside; never delete."""
        stamp = time.strftime("%Y%m%dT%H%M%S")
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{secrets.token_hex(3)}")
        try:
            for suffix in ("-wal", "-shm", ""):
                src = Path(str(self.path) + suffix)
                if src.exists():
                    os.replace(src, Path(str(target) + suffix))
        except OSError as exc:
            raise StoreError(f"cannot move the corrupt event store {self.path} aside: {exc}") from exc
        return target

    def _init_meta(self) -> str:
        conn = self._writer_conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = conn.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
                if row is None:
                    epoch = secrets.token_hex(8)
                    _upsert_meta(conn, "epoch", epoch)
                    _upsert_meta(conn, "created", now_iso())
                else:
                    epoch = str(row[0])
                if self.owner:
                    epoch = self._bind(conn, epoch)
                    self._carry_disk_full(conn)
                self._rebase_dedupe(conn)
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            conn.close()
            raise _open_error(self.path, exc) from exc
        return epoch

    def _bind(self, conn: sqlite3.Connection, epoch: str) -> str:
        """Record which machine and device id this store belongs to; on another one, start a new epoch.

        A cloned card carries the epoch with it, and an ``evtack`` for one copy would then mark the
        other copy's events as delivered. The new epoch separates them; every event the store still
        keeps is made pending again, because the store cannot tell its own acknowledgements from
        ones meant for the other copy, and the collector keeps events by id, so an event it already
        has is counted once however often it comes.
        """
        identity = self._identity or (f"device={self.device_id}" if self.device_id else None)
        machine = fingerprint(identity) if identity else None
        known = dict(conn.execute("SELECT key, value FROM meta WHERE key IN ('machine', 'device')").fetchall())
        changes: dict[str, Any] = {}
        if machine is not None and known.get("machine") not in (None, machine):
            changes["old_machine"], changes["new_machine"] = known["machine"], machine
        if self.device_id is not None and known.get("device") not in (None, self.device_id):
            changes["old_device"], changes["new_device"] = known["device"], self.device_id
        if changes:
            new_epoch = secrets.token_hex(8)
            again = conn.execute("UPDATE events SET acked_at = NULL WHERE acked_at IS NOT NULL").rowcount
            pending = conn.execute("SELECT COUNT(*) FROM events WHERE acked_at IS NULL").fetchone()[0]
            head = chain.read_head(conn)
            _upsert_meta(conn, "epoch", new_epoch)
            self.moved = {
                **changes,
                "old_epoch": epoch,
                "new_epoch": new_epoch,
                "pending": int(pending),
                "made_pending_again": int(again),
                # The old chain's last link, so the collector can tell whether all of it arrived.
                "old_chain": _chain_seal(head, epoch),
            }
            log.error(
                "event store %s was last used by another %s: new epoch %s, %d events to send again",
                self.path,
                " and ".join(k[4:] for k in changes if k.startswith("new_")),
                new_epoch,
                pending,
            )
            epoch = new_epoch
        if machine is not None:
            _upsert_meta(conn, "machine", machine)
        if self.device_id is not None:
            _upsert_meta(conn, "device", self.device_id)
        return epoch

    def _carry_disk_full(self, conn: sqlite3.Connection) -> None:
        """The last daemon stopped (killed, a power cut) while the disk was full, as its note in
        ``daemon.lock`` says: count what it refused, which it could not write down itself."""
        previous = self._lock.previous.get("disk_full") if self._lock is not None else None
        if not isinstance(previous, dict):
            return
        refused = previous.get("refused")
        refused = refused if isinstance(refused, int) and refused > 0 else 0
        if refused:
            self.add_to_counter(conn, "refused_disk_full", refused)
        _upsert_meta(
            conn,
            META_DISK_FULL,
            compact({"since": previous.get("since"), "refused": refused, "until": None, "stopped": True}),
        )
        log.warning(
            "event store: the last edge run stopped while the disk holding %s was full; it had refused %d event(s) "
            "since %s",
            self.path.parent,
            refused,
            previous.get("since"),
        )

    def _rebase_dedupe(self, conn: sqlite3.Connection) -> None:
        """Carry dedupe keys of an earlier boot over to this boot's clock.

        A key lives for its TTL of the machine's running time: within a boot that is measured on
        the boot clock, which NTP and fake-hwclock never move. Across a power cut the time spent
        off cannot be known (the wall clock may be the guess fake-hwclock restored), so it is not
        counted: a key keeps what it had left when the store last saw the old boot, and may outlive
        its TTL by the downtime, never fall short of it.
        """
        boot, now = self.time.boot(), self.time.since_boot()
        row = conn.execute("SELECT value FROM meta WHERE key = 'uptime_seen'").fetchone()
        seen_boot, _, seen_up = (str(row[0]) if row else "").partition(" ")
        try:
            seen = float(seen_up)
        except ValueError:
            seen_boot, seen = "", 0.0
        conn.execute(
            "UPDATE dedupe SET live_until = :now + max(0, CASE "
            "  WHEN boot IS NULL OR live_until IS NULL THEN expires - :wall "  # a store from before boot clocks
            "  WHEN boot = :seen_boot THEN live_until - :seen "
            "  ELSE live_until END), boot = :boot "  # an old boot whose end was never seen: keep it all
            "WHERE boot IS NOT :boot",
            {"now": now, "wall": self.time.wall(), "seen_boot": seen_boot, "seen": seen, "boot": boot},
        )
        _upsert_meta(conn, "uptime_seen", f"{boot} {now!r}")

    def _report_quarantine(self) -> None:
        """Copy what was read from the quarantined file into the new store and say so."""
        assert self.quarantined is not None
        found = self.salvaged or Salvage()

        def copy(conn: sqlite3.Connection) -> list[Committed]:
            # Salvaged events keep their data, and with it their link in the old epoch's chain; and
            # their seq, which that link's digest covers, so the copy hashes as the original did.
            # Seqs stay unique in the new epoch: its own events are numbered after them. (Should
            # another process have appended first, the copies are numbered after its events and
            # their links then show as breaks, which is what the verifier should say of them.)
            top = int(conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0])
            keep = all(e.old_seq > top for e in found.events)
            committed = [
                self._insert(
                    conn,
                    (e.id, e.type, e.priority, e.ts, e.clock_synced, e.data, None, 0.0),
                    chained=False,
                    seq=e.old_seq if keep else None,
                )
                for e in found.events
            ]
            new_seq = {e.id: c.seq for e, c in zip(found.events, committed, strict=True)}
            for key, event_id, _old_seq, expires, old_boot, live_until in found.dedupe:
                if event_id not in new_seq and event_id not in found.acked_ids:
                    # Its event could not be read: let a repeat (a panel resending an unanswered
                    # press) be stored again rather than taken for a duplicate of nothing.
                    continue
                conn.execute(
                    "INSERT OR IGNORE INTO dedupe (key, id, seq, expires, boot, live_until) VALUES (?, ?, ?, ?, ?, ?)",
                    (key, event_id, new_seq.get(event_id, 0), expires, old_boot, live_until),
                )
            conn.executemany(
                "INSERT OR IGNORE INTO commands (cmd_id, name, exp, state, reason, result, updated) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [r for r in found.commands if len(r) == 7],
            )
            conn.executemany(
                "INSERT INTO replies (topic, payload, retain) VALUES (?, ?, ?)",
                [r for r in found.replies if len(r) == 3],
            )
            for name, value in found.counters.items():
                self.add_to_counter(conn, name, value)
            if found.uptime_seen:
                _upsert_meta(conn, "uptime_seen", found.uptime_seen)
            # The copied keys may come from an earlier boot: put them on this boot's clock now.
            self._rebase_dedupe(conn)
            return committed

        try:
            self._submit(copy, appends=True)
        except (StoreError, sqlite3.Error, ValueError) as exc:
            # The store itself is healthy: run on, and let the report below say nothing came across.
            log.error("copying events out of %s failed: %s", self.quarantined, exc)
            found = Salvage(readable=found.readable, unreadable=found.unreadable + len(found.events))
        self.bump("quarantines")
        if found.events:
            self.bump("recovered_events", len(found.events))
        if found.unreadable:
            self.bump("unreadable_events", found.unreadable)
        self.append(
            "security",
            {
                "kind": "store_quarantined",
                "path": str(self.quarantined),
                "old_epoch": found.epoch,
                "new_epoch": self.epoch,
                "old_chain": _chain_seal(found.chain_head, found.epoch),
                "readable": found.readable,
                "recovered": len(found.events),
                "unreadable": found.unreadable,
            },
            "critical",
        )
        log.error(
            "recovered %d pending events from %s; %d rows could not be read",
            len(found.events),
            self.quarantined,
            found.unreadable,
        )

    # -- the writer thread ----------------------------------------------------------------------

    def alive(self) -> bool:
        """Whether the writer thread runs (for the daemon's watchdog): if not, every write fails."""
        return self._thread is not None and self._thread.is_alive()

    def _submit(
        self,
        fn: Callable[[sqlite3.Connection], T],
        *,
        durable: bool = True,
        appends: bool = False,
        txn: bool = True,
        keys: tuple[str | None, ...] = (),
    ) -> T:
        fut: Future[T] = Future()
        with self._state_lock:
            if self.readonly:
                raise StoreError(f"event store {self.path} is open read-only")
            if self._closed:
                raise StoreError("event store is closed")
            if self._writer_stopped is not None:
                raise StoreError(f"event store writer stopped: {self._writer_stopped}")
            self._queue.put(_Op(fn, durable, fut, appends, txn, keys))
        try:
            return fut.result(timeout=self.wait_timeout_s)
        except TimeoutError:
            if fut.cancel():
                raise StoreError(
                    f"event store writer did not get to the request within {self.wait_timeout_s:.0f} s; "
                    "withdrawn, nothing was written"
                ) from None
            raise StoreError(
                f"event store write still running after {self.wait_timeout_s:.0f} s (is the disk stalled?); "
                "it may yet be committed"
            ) from None

    def _writer_loop(self) -> None:
        conn = self._writer_conn
        carry: _Op | None = None
        current: list[_Op] = []
        reason = "closed"
        try:
            while True:
                first = carry if carry is not None else self._queue.get()
                carry = None
                if first is None:
                    break
                group = [first]
                stop = False
                while first.txn and len(group) < _GROUP_MAX:
                    try:
                        nxt = self._queue.get_nowait()
                    except Empty:
                        break
                    if nxt is None:
                        stop = True
                        break
                    if not nxt.txn:
                        carry = nxt
                        break
                    group.append(nxt)
                # A request whose caller gave up waiting is withdrawn here, before it can commit.
                current = [op for op in group if op.future.set_running_or_notify_cancel()]
                try:
                    if not current:
                        pass
                    elif not first.txn:
                        self._run_alone(conn, current[0])
                    else:
                        self._run_group(conn, current)
                except Exception as exc:
                    # Whatever failed (after a commit, or around one), the thread must live on:
                    # a dead writer would leave every later append waiting.
                    log.exception("event store writer: a request failed outside its transaction")
                    self._recover(conn)
                    err = (
                        _translate(exc, self.path.parent)
                        if isinstance(exc, sqlite3.Error)
                        else StoreError(f"event store: {exc}")
                    )
                    for op in current:
                        if not op.future.done():
                            op.future.set_exception(err)
                current = []
                if stop:
                    break
        except BaseException as exc:
            # Not an error a request can be failed with (SystemExit, MemoryError...): the thread
            # ends, and every caller from now on hears so at once rather than waiting forever.
            reason = f"{type(exc).__name__}: {exc}"
            log.critical("event store writer stopped: %s", reason, exc_info=True)
        finally:
            with self._state_lock:
                self._writer_stopped = reason
            err = StoreError(f"event store writer stopped: {reason}")
            for op in current:
                if not op.future.done():
                    op.future.set_exception(err)
            while True:
                try:
                    left = self._queue.get_nowait()
                except Empty:
                    break
                if left is not None and left.future.set_running_or_notify_cancel():
                    left.future.set_exception(err)
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    @staticmethod
    def _recover(conn: sqlite3.Connection) -> None:
        """Leave no transaction open behind a failure, or every later BEGIN would fail too."""
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")

    def _run_alone(self, conn: sqlite3.Connection, op: _Op) -> None:
        """Maintenance (eviction, checkpoints) that manages its own transactions."""
        try:
            op.future.set_result(op.fn(conn))
        except Exception as exc:
            self._recover(conn)
            op.future.set_exception(_translate(exc, self.path.parent) if isinstance(exc, sqlite3.Error) else exc)

    def _set_sync(self, conn: sqlite3.Connection, durable: bool) -> None:
        # Bulk-only groups may skip the fsync (WAL + NORMAL survives a process crash, and a
        # power cut loses at most recent bulk events); anything else is committed with FULL.
        mode = "FULL" if durable else "NORMAL"
        if mode != self._sync_mode:
            conn.execute(f"PRAGMA synchronous = {mode}")
            self._sync_mode = mode

    def _run_group(self, conn: sqlite3.Connection, group: list[_Op]) -> None:
        try:
            self._set_sync(conn, any(op.durable for op in group))
            conn.execute("BEGIN IMMEDIATE")
            results = [op.fn(conn) for op in group]
            conn.execute("COMMIT")
        except Exception as exc:
            self._recover(conn)
            if len(group) > 1:
                # One bad request must not fail its neighbours: run them one by one.
                for op in group:
                    self._run_group(conn, [op])
                return
            err = _translate(exc, self.path.parent) if isinstance(exc, sqlite3.Error) else exc
            if isinstance(err, StoreFull):
                self._on_disk_full(group[0].keys)
            group[0].future.set_exception(err)
            return
        for op, result in zip(group, results, strict=True):
            op.future.set_result(result)
        if self._full is not None or self._holding:
            self._on_room_again(conn)
        appended = [c.seq for op, r in zip(group, results, strict=True) if op.appends for c in r]
        if appended:
            self._after_append(conn, max(appended))

    # -- a full disk --------------------------------------------------------------------------------

    def _on_disk_full(self, keys: tuple[str | None, ...]) -> None:
        """A request failed for lack of space (writer thread). The refused events were never
        acknowledged to anyone (the caller got StoreFull), so nothing is lost; what is counted
        here is what a technician needs to hear, and it is said in ``daemon.lock`` because the
        database cannot take another byte. An event offered again with the same dedupe key (a
        panel repeating an unacknowledged press) is counted once."""
        now = now_iso()
        first = self._full is None
        full = self._full = self._full or {"since": now, "refused": 0}
        new = [k for k in keys if k is None or k not in self._refused_keys]
        if len(self._refused_keys) < MAX_REFUSED_KEYS:
            self._refused_keys.update(k for k in new if k is not None)
        if new:
            full["refused"] += len(new)
            full["last_refused"] = now
        self._write_note()
        if first:
            # The daemon's word for the journal; another process (edge emit) tells its caller instead.
            log.log(
                logging.ERROR if self.owner else logging.DEBUG,
                "event store: the disk holding %s is full (%s bytes free): new events are refused, and not "
                "acknowledged, until space is freed there; nothing already stored is lost",
                self.path.parent,
                free_bytes(self.path.parent),
            )

    def _on_room_again(self, conn: sqlite3.Connection) -> None:
        """A commit went through after the disk was full (writer thread): record what was held
        meanwhile (acknowledgements, counts, meta values, other writes) and the count of refused
        events, in one transaction of their own. If that finds the disk full again, everything stays
        as it was, for the next commit."""
        with self._state_lock:
            held, self._held_acks = self._held_acks, []
            counts, self._held_counts = self._held_counts, {}
            meta, self._held_meta = self._held_meta, {}
            writes, self._held_writes = self._held_writes, []
            self._holding = False
        full = self._full
        done: list[tuple[Callable[[Any], None] | None, Any]] = []
        try:
            self._set_sync(conn, bool(writes))
            conn.execute("BEGIN IMMEDIATE")
            acked = self._ack_spans(conn, held) if held else 0
            for name, by in counts.items():
                self.add_to_counter(conn, name, by)
            for key, value in meta.items():
                _upsert_meta(conn, key, value)
            for fn, then in writes:
                done.extend(self._held_write(conn, fn, then))
            if full is not None:
                if full["refused"]:
                    self.add_to_counter(conn, "refused_disk_full", full["refused"])
                _upsert_meta(conn, META_DISK_FULL, compact({**full, "until": now_iso()}))
            conn.execute("COMMIT")
        except sqlite3.Error:
            self._recover(conn)
            with self._state_lock:
                self._held_acks = _merge_spans(held + self._held_acks)
                for name, by in self._held_counts.items():
                    counts[name] = counts.get(name, 0) + by
                self._held_counts = counts
                self._held_meta = {**meta, **self._held_meta}  # a value set since is newer
                self._held_writes = writes + self._held_writes
                self._holding = True
            return
        for then, result in done:
            if then is not None:
                try:
                    then(result)
                except Exception:
                    log.exception("event store: reporting a write held while the disk was full failed")
        if full is not None:
            self._full = None
            self._refused_keys.clear()
            self._write_note()
            log.log(
                logging.WARNING if self.owner else logging.DEBUG,
                "event store: the disk holding %s has room again; %d event(s) were refused while it was full "
                "(since %s), %d acknowledged event(s) recorded late",
                self.path.parent,
                full["refused"],
                full["since"],
                acked,
            )

    def _held_write(
        self, conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], Any], then: Callable[[Any], None] | None
    ) -> list[tuple[Callable[[Any], None] | None, Any]]:
        """Run one held write inside :meth:`_on_room_again`'s transaction, in a savepoint: one that
        fails for another reason than space is dropped (logged), not left to block the others."""
        conn.execute("SAVEPOINT held_write")
        try:
            result = fn(conn)
        except Exception as exc:
            conn.execute("ROLLBACK TO held_write")
            conn.execute("RELEASE held_write")
            if isinstance(exc, sqlite3.Error) and isinstance(_translate(exc, self.path.parent), StoreFull):
                raise  # still no room: everything waits for the next commit
            log.error("event store: a write held while the disk was full failed and is dropped: %s", exc)
            return []
        conn.execute("RELEASE held_write")
        return [(then, result)]

    def _hold(self) -> bool:
        """Mark something held (under _state_lock); True if it is the first thing of this full period."""
        first = not self._holding
        self._holding = True
        return first

    def _hold_acks(self, spans: list[tuple[int, int]]) -> None:
        with self._state_lock:
            self._hold()
            first = not self._held_acks
            self._held_acks = _merge_spans(self._held_acks + spans)
            if len(self._held_acks) > MAX_HELD_ACK_SPANS:
                # Forgetting an acknowledgement only means those events are sent again.
                del self._held_acks[: len(self._held_acks) - MAX_HELD_ACK_SPANS]
        if first:
            log.warning(
                "event store: the disk is full; the collector's acknowledgements are kept in memory until "
                "there is room (events whose acknowledgement is lost with the process are sent again)"
            )

    @property
    def holding(self) -> bool:
        """Whether the disk was found full and has not been written to since, or something waits in
        memory to be written (see :meth:`retry_held`)."""
        return self._full is not None or self._holding

    def retry_held(self) -> None:
        """Try now to write what was held while the disk was full (otherwise the next commit does).
        Cheap: an empty transaction, after which the writer tries the held writes; nothing raises
        if the disk is still full."""
        if self.holding:
            with contextlib.suppress(StoreError):
                self._submit(lambda conn: None, durable=False)

    def set_note(self, key: str, value: Any) -> None:
        """Set ``key`` in the note in ``daemon.lock`` (the owner's; see :class:`DaemonLock`): for what
        ``edge status`` must be able to read while SQLite can write nothing, e.g. the link state.
        Rewrites one block in place: needs no new space. A no-op for a store that is not the owner."""
        with self._note_lock:
            self._note_parts[key] = value
        self._write_note()

    def _write_note(self) -> None:
        if self._lock is None:
            return
        with self._note_lock:
            note = dict(self._note_parts)
            full = self._full
            if full is not None:
                note["disk_full"] = {**full, "dir": str(self.path.parent)}
            self._lock.note(note)

    def _after_append(self, conn: sqlite3.Connection, last_seq: int) -> None:
        """After a commit that appended: its callers already have their answer (the events are on
        disk), so nothing here may fail them or stop the writer."""
        for listener in list(self._listeners):
            try:
                listener(last_seq)
            except Exception:
                log.exception("outbox listener failed")
        if not self._owns_wake_socket and self._wake_sock is not None:
            with contextlib.suppress(OSError):
                self._wake_sock.sendto(b"!", str(self.path.parent / WAKE_SOCKET))
        # Measuring the size costs a few pragmas and a stat(), so it is done once per 1 % of the
        # cap appended (or every second): the store never runs past its cap by more than that.
        now = time.monotonic()
        if self._appended_bytes >= self.max_bytes // 100 or now - self._size_checked_at >= 1.0:
            self._appended_bytes = 0
            self._size_checked_at = now
            try:
                if self._used_bytes(conn) > self.max_bytes:
                    self._enforce_cap(conn)
            except Exception as exc:
                # E.g. SQLITE_FULL while checkpointing on a nearly full card. Appends go on (each is
                # refused with StoreFull if it cannot be committed); the cap is tried again later.
                self._recover(conn)
                if not self._cap_failing:
                    log.error("event store: enforcing the byte cap failed, will retry: %s", exc)
                    self._cap_failing = True
            else:
                if self._cap_failing:
                    log.info("event store: the byte cap is enforced again")
                    self._cap_failing = False

    # -- size cap and eviction ------------------------------------------------------------------

    def _wal_bytes(self) -> int:
        try:
            return os.stat(str(self.path) + "-wal").st_size
        except FileNotFoundError:
            return 0

    def _used_bytes(self, conn: sqlite3.Connection) -> int:
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        return int((pages - free) * page_size + self._wal_bytes())

    def _enforce_cap(self, conn: sqlite3.Connection) -> dict[str, int]:
        """Free space down to 90 % of the cap: acknowledged events first (they are safe on the
        server), then pending bulk, then pending normal, oldest first. Critical events stay."""
        target = int(self.max_bytes * 0.9)
        evicted = {"bulk": 0, "normal": 0}
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        steps: list[tuple[str | None, str]] = [
            (None, "SELECT seq FROM events WHERE acked_at IS NOT NULL ORDER BY seq LIMIT 500"),
            ("bulk", "SELECT seq FROM events WHERE acked_at IS NULL AND priority = 2 ORDER BY seq LIMIT 500"),
            ("normal", "SELECT seq FROM events WHERE acked_at IS NULL AND priority = 1 ORDER BY seq LIMIT 500"),
        ]
        for klass, query in steps:
            while self._used_bytes(conn) > target:
                seqs = [r[0] for r in conn.execute(query)]
                if not seqs:
                    break
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.execute(f"DELETE FROM events WHERE seq IN ({','.join('?' * len(seqs))})", seqs)
                    if klass is not None:
                        self.add_to_counter(conn, f"evicted_{klass}", len(seqs))
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                if klass is not None:
                    evicted[klass] += len(seqs)
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        # Python's execute() steps a statement once, and incremental_vacuum frees one page per
        # step; executescript() runs it to the end.
        conn.executescript("PRAGMA incremental_vacuum;")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        if any(evicted.values()):
            log.warning("event store over its %d-byte cap: evicted %s", self.max_bytes, evicted)
        if self._used_bytes(conn) > self.max_bytes:
            if not self._over_cap_warned:
                log.error("event store holds only critical events and is still over its cap")
                self._over_cap_warned = True
        else:
            self._over_cap_warned = False
        return evicted

    def _enforce_cap_if_needed(self, conn: sqlite3.Connection) -> dict[str, int]:
        if self._used_bytes(conn) > self.max_bytes:
            return self._enforce_cap(conn)
        return {"bulk": 0, "normal": 0}

    def enforce_cap(self) -> dict[str, int]:
        """Check the byte cap now and evict if needed (the writer also checks after appends)."""
        return self._submit(self._enforce_cap_if_needed, durable=False, txn=False)

    # -- counters -------------------------------------------------------------------------------

    @staticmethod
    def add_to_counter(conn: sqlite3.Connection, name: str, by: int = 1) -> None:
        """Add to a persistent counter inside a transaction of :meth:`transact` (``conn`` is its)."""
        conn.execute(
            "INSERT INTO counters (name, value) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
            (name, by),
        )

    def bump(self, name: str, by: int = 1) -> None:
        """Add to a persistent counter (rejected messages, quarantines...). On a full disk the
        count is kept in memory and added with the first commit that finds room, never raised: a
        count must not stop what it counts (it is lost only if the process ends first)."""
        try:
            self._submit(lambda conn: self.add_to_counter(conn, name, by), durable=False)
        except StoreFull:
            with self._state_lock:
                self._hold()
                self._held_counts[name] = self._held_counts.get(name, 0) + by

    # -- appending ------------------------------------------------------------------------------

    def _prepare(self, event: NewEvent) -> _Row:
        _check_type(event.type)
        priority = event.priority or DEFAULT_PRIORITY.get(event.type, "normal")
        if priority not in _PRIORITY_CODE:
            raise ValueError(f"priority must be one of {', '.join(PRIORITIES)}: {priority!r}")
        data = compact(event.data)
        # The writer adds the chain link to chained events: room for it is kept here, where the
        # caller can still be told the event is too large.
        extra = chain.CHAIN_BYTES if event.type in chain.CHAINED_TYPES else 0
        # A code point is at most 4 bytes in UTF-8: most events need no encoding to be measured.
        if len(data) * 4 + extra > self.max_event_bytes:
            size = len(data.encode("utf-8")) + extra
            if size > self.max_event_bytes:
                raise EventTooLarge(
                    f"{event.type} event data is {size:,} bytes; the limit is {self.max_event_bytes:,}",
                    size=size,
                    limit=self.max_event_bytes,
                )
        return (
            new_id(),
            event.type,
            _PRIORITY_CODE[priority],
            self.timestamp(),
            int(self.clock.synced()),
            data,
            event.dedupe_key,
            event.dedupe_ttl_s,
        )

    def _insert(
        self, conn: sqlite3.Connection, row: _Row, *, chained: bool = True, seq: int | None = None
    ) -> Committed:
        """Insert one event in the writer's open transaction. ``chained=False`` and ``seq`` are for
        an event carried over from another store: its chain link is already in its data, and
        ``seq`` keeps the number that link was made with."""
        event_id, etype, prio, ts, synced, data, dedupe_key, ttl = row
        if dedupe_key is not None:
            seen = conn.execute("SELECT id, seq FROM dedupe WHERE key = ?", (dedupe_key,)).fetchone()
            if seen is not None:
                return Committed(seen[0], seen[1], duplicate=True)
        made: chain.Link | None = None
        if chained and etype in chain.CHAINED_TYPES:
            data, made = chain.link(conn, data)
        cur = conn.execute(
            "INSERT INTO events (seq, id, type, priority, ts, clock_synced, data) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (seq, event_id, etype, prio, ts, synced, data),
        )
        seq = int(cur.lastrowid or 0)
        if made is not None:
            # Same transaction as the insert: the head and the event are committed together or not at all.
            chain.advance(conn, made, event_id, seq, etype, ts, data)
        if dedupe_key is not None:
            conn.execute(
                "INSERT INTO dedupe (key, id, seq, expires, boot, live_until) VALUES (?, ?, ?, ?, ?, ?)",
                (dedupe_key, event_id, seq, self.time.wall() + ttl, self.time.boot(), self.time.since_boot() + ttl),
            )
        return Committed(event_id, seq)

    def append(
        self,
        type: str,
        data: Mapping[str, Any],
        priority: Priority | None = None,
        *,
        dedupe_key: str | None = None,
        dedupe_ttl_s: float = 7 * 86400,
    ) -> Committed:
        """Commit one event and return once it is on disk.

        ``dedupe_key`` makes the append idempotent: if an event with that key was committed
        within ``dedupe_ttl_s`` (of the machine's running time, whatever the wall clock does),
        nothing is added and the earlier event is returned.

        Raises :class:`EventTooLarge` if the JSON of ``data`` is over ``max_event_bytes``,
        :class:`StoreFull` if the disk is full, :class:`StoreError` if it could not be committed.
        """
        return self.append_many([NewEvent(type, data, priority, dedupe_key, dedupe_ttl_s)])[0]

    def append_many(
        self,
        events: Sequence[NewEvent],
        *,
        also: Callable[[sqlite3.Connection], Any] | None = None,
    ) -> list[Committed]:
        """Commit several events in one transaction, in order.

        ``also(conn)``, when given, runs inside that same transaction before the inserts, so rows a
        service keeps in its own table (the loudspeaker's schedule) are committed together with the
        event that reports them, or not at all: if it raises, nothing is committed and the error
        reaches the caller. It must write only through ``conn``: when a request grouped into the
        same commit fails, the group is rolled back and each request run again on its own.
        """
        rows = [self._prepare(e) for e in events]
        if not rows and also is None:
            return []
        durable = also is not None or any(r[2] < 2 for r in rows)
        self._appended_bytes += sum(len(r[5]) + 120 for r in rows)

        def op(conn: sqlite3.Connection) -> list[Committed]:
            if also is not None:
                also(conn)
            return [self._insert(conn, r) for r in rows]

        return self._submit(op, durable=durable, appends=bool(rows), keys=tuple(r[6] for r in rows))

    # -- acknowledgements and housekeeping ------------------------------------------------------

    def mark_acked(self, ranges: Iterable[tuple[int, int]]) -> int:
        """Mark events ``from_seq..to_seq`` (inclusive) as stored by the collector.

        Returns how many pending events this acknowledged. On a full disk nothing can be written:
        the ranges are held in memory, recorded with the first commit that finds room again, and
        0 is returned meanwhile.
        """
        spans = [(int(a), int(b)) for a, b in ranges if int(a) <= int(b)]
        if not spans:
            return 0
        try:
            # An ack only loses information if it is lost (the event is then sent again): no fsync.
            return self._submit(lambda conn: self._ack_spans(conn, spans), durable=False)
        except StoreFull:
            # The collector has the events; they stay pending here until this can be written. Not
            # raised: the sender must go on delivering the backlog, which a full disk does not stop.
            self._hold_acks(spans)
            return 0

    def _ack_spans(self, conn: sqlite3.Connection, spans: Iterable[tuple[int, int]]) -> int:
        now = self.time.wall()
        n = 0
        for a, b in spans:
            cur = conn.execute(
                "UPDATE events SET acked_at = ? WHERE seq BETWEEN ? AND ? AND acked_at IS NULL", (now, a, b)
            )
            n += cur.rowcount
        if n:
            _upsert_meta(conn, "last_ack", now_iso())
        return n

    def mark_pending(self, from_seq: int, to_seq: int | None = None) -> int:
        """Make acknowledged events in ``from_seq..to_seq`` pending again (``sync.resend``), so they
        are sent once more; only events still kept (``keep_acked_s``) can be. Returns how many."""

        def op(conn: sqlite3.Connection) -> int:
            upper = to_seq if to_seq is not None else 2**62
            return int(
                conn.execute(
                    "UPDATE events SET acked_at = NULL WHERE seq BETWEEN ? AND ? AND acked_at IS NOT NULL",
                    (from_seq, upper),
                ).rowcount
            )

        return self._submit(op)

    def transact(self, fn: Callable[[sqlite3.Connection], T], *, durable: bool = True) -> T:
        """Run ``fn(conn)`` in one transaction on the writer thread and return its result once
        committed (with ``durable``, fsynced). For the store's other tables (the command journal)."""
        return self._submit(fn, durable=durable)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Rows of a read-only query, on this thread's read connection."""
        return self._read(sql, params)

    def housekeeping(self) -> int:
        """Forget acknowledged events older than ``keep_acked_s`` and expired dedupe keys."""
        cutoff = self.time.wall() - self.keep_acked_s

        def op(conn: sqlite3.Connection) -> int:
            n = conn.execute("DELETE FROM events WHERE acked_at IS NOT NULL AND acked_at < ?", (cutoff,)).rowcount
            self._forget_dedupe(conn)
            return n

        removed = self._submit(op, durable=False)
        self.enforce_cap()
        return removed

    def _forget_dedupe(self, conn: sqlite3.Connection) -> None:
        # Only keys of this boot, on the boot clock: a wall clock stepped forward by NTP after a
        # power cut would otherwise expire every key at once. Keys of an earlier boot wait for the
        # next start to carry them over (_rebase_dedupe).
        boot, now = self.time.boot(), self.time.since_boot()
        conn.execute("DELETE FROM dedupe WHERE boot = ? AND live_until < ?", (boot, now))
        _upsert_meta(conn, "uptime_seen", f"{boot} {now!r}")

    def set_meta(self, key: str, value: str, *, hold_if_full: bool = False) -> None:
        """Set one ``meta`` value (the daemon's pid, the link state...).

        With ``hold_if_full``, for a value that only informs: on a full disk it is kept in memory
        and written with the first commit that finds room (the latest value of a key wins), instead
        of raising :class:`StoreFull`."""
        try:
            self._submit(lambda conn: _upsert_meta(conn, key, value), durable=False)
        except StoreFull:
            if not hold_if_full:
                raise
            with self._state_lock:
                self._hold()
                self._held_meta[key] = value

    def transact_when_room(
        self, fn: Callable[[sqlite3.Connection], T], then: Callable[[T], None] | None = None
    ) -> T | None:
        """Like :meth:`transact` (durable), for a write that may wait while the disk is full: on
        :class:`StoreFull` it is held in memory and run in the first transaction that finds room.
        ``then(result)`` is called once ``fn`` is committed: here, or after that later commit on the
        writer thread (where it must not use the store's writing methods). Returns ``fn``'s result,
        or None when it was held; the write is lost only if the process ends first. At most
        :data:`MAX_HELD_WRITES` are held (the oldest is forgotten first), so ``fn`` must be one
        whose loss does no harm beyond a repetition (setting events aside: a forgotten one is
        sent, and refused, again)."""
        try:
            result = self._submit(fn)
        except StoreFull:
            with self._state_lock:
                first = self._hold()
                self._held_writes.append((fn, then))
                dropped = len(self._held_writes) - MAX_HELD_WRITES
                if dropped > 0:
                    del self._held_writes[:dropped]
            if first:
                log.warning(
                    "event store: the disk is full; writes that can wait are kept in memory until there is room"
                )
            return None
        if then is not None:
            then(result)
        return result

    def add_listener(self, listener: Callable[[int], None]) -> None:
        """Call ``listener(last_seq)`` on the writer thread after every commit that appended events."""
        self._listeners.append(listener)

    def bind_wake_socket(self) -> socket.socket:
        """Bind the state directory's wake socket (the daemon does this); other processes that
        append to this store then send it a datagram after each commit."""
        path = self.path.parent / WAKE_SOCKET
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(path))
        # Sending to it needs write permission; only the store's own user writes events.
        os.chmod(path, 0o600)
        self._owns_wake_socket = True
        return sock

    # -- reading (any thread; each thread gets its own read connection) -----------------------------

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            if self._closed:
                raise StoreError("event store is closed")
            conn = self._connect()
            conn.execute("PRAGMA query_only = 1")
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        try:
            return self._reader().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise _translate(exc, self.path.parent) from exc

    @staticmethod
    def _event(row: Sequence[Any]) -> StoredEvent:
        return StoredEvent(row[0], row[1], row[2], PRIORITIES[row[3]], row[4], bool(row[5]), row[6], row[7])

    _COLUMNS = "seq, id, type, priority, ts, clock_synced, data, acked_at"

    def pending(self, after_seq: int = 0, limit: int = 1000, up_to_seq: int | None = None) -> list[StoredEvent]:
        """Pending events with ``seq > after_seq`` (and ``<= up_to_seq``), in seq order."""
        if up_to_seq is None:
            rows = self._read(
                f"SELECT {self._COLUMNS} FROM events WHERE acked_at IS NULL AND seq > ? ORDER BY seq LIMIT ?",
                (after_seq, limit),
            )
        else:
            rows = self._read(
                f"SELECT {self._COLUMNS} FROM events WHERE acked_at IS NULL AND seq > ? AND seq <= ? "
                "ORDER BY seq LIMIT ?",
                (after_seq, up_to_seq, limit),
            )
        return [self._event(r) for r in rows]

    def pending_in(self, seqs: Sequence[int]) -> list[StoredEvent]:
        """Those of ``seqs`` that are still pending, in seq order."""
        out: list[StoredEvent] = []
        for i in range(0, len(seqs), 500):
            chunk = list(seqs[i : i + 500])
            rows = self._read(
                f"SELECT {self._COLUMNS} FROM events WHERE acked_at IS NULL AND seq IN "
                f"({','.join('?' * len(chunk))}) ORDER BY seq",
                chunk,
            )
            out.extend(self._event(r) for r in rows)
        return out

    def last_seq(self) -> int:
        row = self._read("SELECT seq FROM sqlite_sequence WHERE name = 'events'")
        return int(row[0][0]) if row else 0

    def get_meta(self, key: str) -> str | None:
        row = self._read("SELECT value FROM meta WHERE key = ?", (key,))
        return str(row[0][0]) if row else None

    def counters(self) -> dict[str, int]:
        return {name: int(value) for name, value in self._read("SELECT name, value FROM counters")}

    def list_events(
        self,
        *,
        type: str | None = None,
        state: Literal["all", "pending", "acked"] = "all",
        since: str | None = None,
        limit: int = 50,
    ) -> list[StoredEvent]:
        """Events, newest first, for ``edge events``."""
        where: list[str] = []
        params: list[Any] = []
        if type:
            where.append("type = ?")
            params.append(type)
        if state == "pending":
            where.append("acked_at IS NULL")
        elif state == "acked":
            where.append("acked_at IS NOT NULL")
        if since:
            where.append("ts >= ?")
            params.append(since)
        sql = f"SELECT {self._COLUMNS} FROM events"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq DESC LIMIT ?"
        params.append(limit)
        return [self._event(r) for r in self._read(sql, params)]

    def stats(self) -> StoreStats:
        by_prio: dict[str, int] = {p: 0 for p in PRIORITIES}
        for prio, n in self._read("SELECT priority, COUNT(*) FROM events WHERE acked_at IS NULL GROUP BY priority"):
            by_prio[PRIORITIES[prio]] = int(n)
        oldest = self._read("SELECT ts FROM events WHERE acked_at IS NULL ORDER BY seq LIMIT 1")
        counters = self.counters()
        return StoreStats(
            epoch=self.epoch,
            depth=sum(by_prio.values()),
            depth_by_priority=by_prio,
            oldest_pending_ts=oldest[0][0] if oldest else None,
            last_seq=self.last_seq(),
            db_bytes=self.used_bytes(),
            max_bytes=self.max_bytes,
            evictions={"bulk": counters.get("evicted_bulk", 0), "normal": counters.get("evicted_normal", 0)},
            counters=counters,
        )

    def used_bytes(self) -> int:
        """The bytes counted against ``max_bytes``: the database's pages in use and its WAL."""
        page = self._read("PRAGMA page_size")[0][0] * (
            self._read("PRAGMA page_count")[0][0] - self._read("PRAGMA freelist_count")[0][0]
        )
        return int(page) + self._wal_bytes()

    def integrity_check(self) -> str:
        """``PRAGMA integrity_check``: "ok" or the first problem."""
        return str(self._read("PRAGMA integrity_check")[0][0])

    # -- lifetime -------------------------------------------------------------------------------

    def close(self) -> None:
        """Finish queued writes, close every connection and let go of the daemon lock. Idempotent."""
        if self._closed:
            return
        if self.alive():
            # The last boot-clock reading this boot, for carrying dedupe keys over a power cut.
            with contextlib.suppress(StoreError):
                self._submit(self._forget_dedupe, durable=False)
        with self._state_lock:
            self._closed = True
            if self._thread is not None:
                self._queue.put(None)
        if self._thread is not None:
            self._thread.join()
        with self._readers_lock:
            for conn in self._readers:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            self._readers.clear()
        if self._wake_sock is not None:
            self._wake_sock.close()
        if self._lock is not None:
            self._lock.release()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
