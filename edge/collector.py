"""``edge collect``: the commune-side collector.

It subscribes to every device's events, validates each batch, stores the events in SQLite by id
(a repeat is ignored, so delivery is exactly-once in effect), **commits, then** publishes an
``evtack`` to the device. Messages waiting at the same moment are stored together, up to
``GROUP_MAX_EVENTS`` events per transaction, taking each topic (device and event type) in turn.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.clock import now_iso
from edge.config import BrokerAddress
from edge.exceptions import BadMessage
from edge.messages import EventBatch, parse
from edge.store import ranges_of
from edge.sync import LinkSettings, MqttLink, Will
from edge.topics import events_filter, parse_device_topic, server_status_topic

log = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
#: Events stored per transaction, at most (one message more may cross it). Small groups send
#: evtacks back while later messages wait, so devices refill their windows meanwhile, and they
#: bound how long a new event waits behind a backlog being stored.
GROUP_MAX_EVENTS = 500


#: Writes event data as json.dumps(data, ensure_ascii=False, separators=(",", ":")) does; one
#: encoder for all events rather than a new one per event (a measurable share of the collector's
#: time per event).
def _non_finite(value: Any) -> bool:
    """Whether a decoded JSON value holds NaN or an infinity anywhere."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_non_finite(v) for v in value.values())
    if isinstance(value, list):
        return any(_non_finite(v) for v in value)
    return False


_DATA_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))

_SCHEMA = """
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


@dataclass
class CollectorStats:
    messages: int = 0
    stored: int = 0
    duplicates: int = 0
    acks_sent: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    by_type: dict[str, int] = field(default_factory=dict)
    devices: set[str] = field(default_factory=set)

    def as_dict(self) -> dict[str, Any]:
        return {
            "messages": self.messages,
            "stored": self.stored,
            "duplicates": self.duplicates,
            "acks_sent": self.acks_sent,
            "rejected": dict(self.rejected),
            "stored_by_type": dict(self.by_type),
            "devices": sorted(self.devices),
        }


class CollectorStore:
    """The collector's SQLite database (table ``events``, one row per event id)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=15.0)
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = FULL")
        self.conn.executescript(_SCHEMA)

    def store(self, batches: Iterable[EventBatch]) -> list[tuple[EventBatch, int]]:
        """Insert every event of every batch in one transaction; returns new rows per batch."""
        received = now_iso()
        out: list[tuple[EventBatch, int]] = []
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            for batch in batches:
                before = self.conn.total_changes
                self.conn.executemany(
                    "INSERT OR IGNORE INTO events (id, device, commune, epoch, seq, type, priority, ts, "
                    "clock_synced, data, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
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
                            _DATA_JSON.encode(e.data),
                            received,
                        )
                        for e in batch.events
                    ],
                )
                out.append((batch, self.conn.total_changes - before))
            self.conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self.conn.execute("ROLLBACK")
            raise
        return out

    def close(self) -> None:
        self.conn.close()


class Collector:
    """Receive, store, acknowledge. ``start()`` / ``stop()``, or ``run_until(event)``."""

    def __init__(
        self,
        broker: str,
        db: str | Path,
        *,
        commune: str = "+",
        root: str = "vn",
        client_id: str | None = None,
        ca_file: Path | None = None,
        cert_file: Path | None = None,
        key_file: Path | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self.root = root
        self.commune = commune
        self.store = CollectorStore(db)
        self.stats = CollectorStats()
        self.max_message_bytes = max_message_bytes
        self._inbox: deque[tuple[str, bytes]] = deque()  # filled by the network thread
        self._queues: dict[str, deque[bytes]] = {}  # per topic, in round order; collector thread only
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        will = None
        self.status_topic = server_status_topic(root, commune) if commune != "+" else None
        if self.status_topic:
            will = Will(self.status_topic, self._status(False))
        self.link = MqttLink(
            LinkSettings(
                address=BrokerAddress.parse(broker),
                client_id=client_id or f"edge-collect-{root}-{commune.replace('+', 'all')}",
                ca_file=ca_file,
                cert_file=cert_file,
                key_file=key_file,
                # Oversized messages are dropped (and counted) before they are even parsed.
                max_incoming_bytes=max_message_bytes,
                reconnect_min_s=0.2,
                reconnect_max_s=10.0,
                will=will,
            )
        )
        self.link.subscribe(events_filter(root, commune), self._on_message)
        self.link.on_connect(self._on_connect)

    @staticmethod
    def _status(online: bool) -> bytes:
        return json.dumps({"v": 1, "online": online, "ts": now_iso()}, separators=(",", ":")).encode()

    def _on_connect(self) -> None:
        if self.status_topic:
            self.link.publish(self.status_topic, self._status(True), retain=True)

    def _on_message(self, topic: str, payload: bytes) -> None:
        self._inbox.append((topic, payload))
        self._wake.set()

    def _reject(self, reason: str, topic: str, detail: str) -> None:
        self.stats.rejected[reason] = self.stats.rejected.get(reason, 0) + 1
        log.warning("rejected a message on %s: %s %s", topic, reason, detail)

    def _validate(self, topic: str, payload: bytes) -> EventBatch | None:
        self.stats.messages += 1
        where = parse_device_topic(topic)
        if where is None or not where.rest.startswith("evt/"):
            self._reject("wrong_topic", topic, "")
            return None
        try:
            batch: EventBatch = parse(EventBatch, payload, self.max_message_bytes)
        except BadMessage as exc:
            self._reject(exc.reason, topic, exc.detail)
            return None
        if (b"NaN" in payload or b"Infinity" in payload) and any(_non_finite(e.data) for e in batch.events):
            # Python's and pydantic's JSON readers accept these tokens; JSON does not, and the
            # stored data must stay readable by any JSON parser on the server.
            self._reject("schema", topic, "NaN or Infinity in data (not JSON)")
            return None
        if (
            batch.device != where.device
            or batch.commune != where.commune
            or batch.events[0].type != where.rest[len("evt/") :]
        ):
            self._reject("wrong_topic", topic, "device, commune or type differ from the topic")
            return None
        return batch

    def _drain(self) -> None:
        # Messages are taken one topic (one device, one event type) at a time in turn, not in
        # arrival order, and a topic that had nothing waiting goes first: a backlog of one type
        # then cannot hold up a device's new events of another type, or another device, while
        # each topic keeps its own (seq) order.
        fresh: dict[str, deque[bytes]] = {}
        while self._inbox:
            topic, payload = self._inbox.popleft()
            queue = self._queues.get(topic)
            if queue is None:
                queue = fresh.setdefault(topic, deque())
            queue.append(payload)
        if fresh:
            self._queues = {**fresh, **self._queues}
        batches: list[EventBatch] = []
        events = 0
        while self._queues and len(batches) < 256 and events < GROUP_MAX_EVENTS:
            for topic in list(self._queues):
                queue = self._queues.pop(topic)
                batch = self._validate(topic, queue.popleft())
                if queue:
                    self._queues[topic] = queue  # to the back of the round
                if batch is not None:
                    batches.append(batch)
                    events += len(batch.events)
                if len(batches) >= 256 or events >= GROUP_MAX_EVENTS:
                    break
        if not batches:
            return
        stored = self.store.store(batches)  # committed when this returns
        for batch, new in stored:
            self.stats.stored += new
            self.stats.duplicates += len(batch.events) - new
            self.stats.devices.add(f"{batch.commune}/{batch.device}")
            t = batch.events[0].type
            self.stats.by_type[t] = self.stats.by_type.get(t, 0) + new
            ack = {"v": 1, "epoch": batch.epoch, "ranges": ranges_of(e.seq for e in batch.events)}
            topic = f"{self.root}/{batch.commune}/dev/{batch.device}/evtack"
            self.link.publish(topic, json.dumps(ack, separators=(",", ":")), qos=1)
            self.stats.acks_sent += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            while self._inbox or self._queues:
                try:
                    self._drain()
                except sqlite3.Error:
                    # Nothing was acknowledged, so the devices will send again; keep running.
                    log.exception("could not store events; they will be sent again")
                    time.sleep(1.0)

    def summary(self) -> dict[str, Any]:
        """Counters so far; oversized messages are counted by the link, which drops them unread."""
        out = self.stats.as_dict()
        if self.link.stats.oversized_dropped:
            out["rejected"]["oversized"] = out["rejected"].get("oversized", 0) + self.link.stats.oversized_dropped
        return out

    def start(self) -> Collector:
        self._thread = threading.Thread(target=self._run, name="collector", daemon=True)
        self._thread.start()
        self.link.start()
        return self

    def stop(self) -> None:
        if self._stop.is_set():
            return
        if self.status_topic and self.link.connected.is_set():
            with contextlib.suppress(Exception):
                self.link.publish(self.status_topic, self._status(False), retain=True).result(2.0)
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5)
        self.link.stop()
        self.store.close()
