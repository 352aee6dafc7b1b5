"""``edge collect``: the commune-side collector.

It subscribes to every device's events, validates each batch, stores the events by id in SQLite or
PostgreSQL (:mod:`edge.server.storage`; a repeat is ignored, so delivery is exactly-once in effect,
also when several collectors share the load through a shared subscription), **commits, then**
publishes an ``evtack`` to the device. Messages waiting at the same moment are stored together, up to
``GROUP_MAX_EVENTS`` events per transaction, taking each topic (device and event type) in turn.

An event that can never be stored (it breaks the contract) is answered, not ignored: the
``evtack`` names it under ``rejected`` with a ``reason``, the device sets it aside, and the good
events of the same message are stored as usual. Only a message that says, on its own device's
topic, which device, epoch and seqs it carries is answered that way; anything less (not JSON,
another contract version, another device's name) is counted and dropped, and its sender, if it is
a device at all, tries again.

Memory is bounded: messages waiting to be stored take at most ``max_queued_bytes``, and past it the
oldest wait is dropped (and counted). Nothing is lost by that: a dropped message was not
acknowledged, so its device sends it again after its ack timeout, and the oldest is also the one
its device is most likely to have sent again already. Blocking instead would stall the network
thread, and with it every device's acknowledgements.

A store that keeps failing (longer than ``store_retry_s``) ends the collector with a clear line,
for systemd to restart it; a thread of the collector that dies does the same (see
:mod:`edge.supervisor`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from edge.clock import now_iso
from edge.config import BrokerAddress
from edge.exceptions import BadMessage, StoreError
from edge.jsonfmt import compact
from edge.messages import MAX_EVENTS_PER_BATCH, EventBatch, WireEvent, parse
from edge.server.storage import SqliteStorage, Storage, StorageError, open_storage
from edge.store import ranges_of
from edge.supervisor import Supervisor, thread_alive
from edge.sync import LinkSettings, MqttLink, Will
from edge.topics import DeviceTopic, events_filter, media_filter, parse_device_topic, server_status_topic

log = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
#: Events stored per transaction, at most (one message more may cross it). Small groups send
#: evtacks back while later messages wait, so devices refill their windows meanwhile, and they
#: bound how long a new event waits behind a backlog being stored.
GROUP_MAX_EVENTS = 500
DEFAULT_MAX_QUEUED_BYTES = 256 * 1024 * 1024
#: What a waiting message costs besides its payload (the topic, the deque slot, the tuple).
MESSAGE_OVERHEAD_BYTES = 200
DEFAULT_STORE_RETRY_S = 60.0
_EPOCH_RE = re.compile(r"^[0-9a-f]{8,64}$")
_ENVELOPE_KEYS = frozenset({"v", "device", "commune", "epoch", "events"})


def _non_finite(value: Any) -> bool:
    """Whether a decoded JSON value holds NaN or an infinity anywhere."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_non_finite(v) for v in value.values())
    if isinstance(value, list):
        return any(_non_finite(v) for v in value)
    return False


@dataclass
class CollectorStats:
    messages: int = 0
    stored: int = 0
    duplicates: int = 0
    acks_sent: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    #: Events answered as rejected (``evtack`` ``rejected``), so their devices set them aside.
    rejected_events: int = 0
    #: Messages dropped unread because too much was waiting to be stored (their devices resend).
    dropped_overload: int = 0
    by_type: dict[str, int] = field(default_factory=dict)
    devices: set[str] = field(default_factory=set)

    def as_dict(self) -> dict[str, Any]:
        return {
            "messages": self.messages,
            "stored": self.stored,
            "duplicates": self.duplicates,
            "acks_sent": self.acks_sent,
            "rejected": dict(self.rejected),
            "rejected_events": self.rejected_events,
            "dropped_overload": self.dropped_overload,
            "stored_by_type": dict(self.by_type),
            "devices": sorted(self.devices),
        }


@dataclass
class Rejection:
    """One event that will never be stored, and why (``reason`` is a countable word)."""

    seq: int
    reason: str
    detail: str


@dataclass
class Received:
    """One message after validation: what to store, what to reject, and where to answer."""

    topic: DeviceTopic
    batch: EventBatch | None
    epoch: str
    rejections: list[Rejection] = field(default_factory=list)


def _default_client_id(root: str, commune: str, share: str | None) -> str:
    """One collector's MQTT client id. The collectors of a share group need distinct ids (one id is
    one session: a second login would take over the first), so the host's name is part of it."""
    base = f"edge-collect-{root}-{commune.replace('+', 'all')}"
    return f"{base}-{share}-{socket.gethostname()}" if share else base


#: The SQLite backend under the name it had before PostgreSQL was added.
CollectorStore = SqliteStorage


class Collector:
    """Receive, store, acknowledge. ``start()`` / ``stop()``; ``failed`` is set if it cannot go on."""

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
        username: str | None = None,
        password: str | None = None,
        share: str | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        max_queued_bytes: int = DEFAULT_MAX_QUEUED_BYTES,
        store_retry_s: float = DEFAULT_STORE_RETRY_S,
        media_dir: Path | None = None,
    ) -> None:
        self.root = root
        self.commune = commune
        self.store: Storage = open_storage(db)
        self.stats = CollectorStats()
        self.max_message_bytes = max_message_bytes
        self.max_queued_bytes = max_queued_bytes
        self.store_retry_s = store_retry_s
        # Filled by the network thread, emptied by the collector thread; both under _lock, which
        # also guards _queues so that the oldest waiting message can be dropped from either.
        self._lock = threading.Lock()
        self._inbox: deque[tuple[str, float, bytes]] = deque()
        self._queues: dict[str, deque[tuple[float, bytes]]] = {}  # per topic, in round order
        self._queued_bytes = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.supervisor = Supervisor()
        will = None
        self.status_topic = server_status_topic(root, commune) if commune != "+" else None
        if self.status_topic:
            will = Will(self.status_topic, self._status(False))
        self.link = MqttLink(
            LinkSettings(
                address=BrokerAddress.parse(broker),
                client_id=client_id or _default_client_id(root, commune, share),
                ca_file=ca_file,
                cert_file=cert_file,
                key_file=key_file,
                username=username,
                password=password,
                # Oversized messages are dropped (and counted) before they are even parsed.
                max_incoming_bytes=max_message_bytes,
                reconnect_min_s=0.2,
                reconnect_max_s=10.0,
                will=will,
            )
        )
        # With a share group the broker hands each message to one collector of the group; any of
        # them may get any batch (and a redelivery may go to another), which the id key absorbs.
        events = events_filter(root, commune)
        self.share = share
        self.link.subscribe(f"$share/{share}/{events}" if share else events, self._on_message)
        self._leaving = False
        if share and self.status_topic:
            # The server's presence is one retained message for the whole group: when one collector
            # goes (its will says offline), the others say online again, or the devices would hold
            # their events back until that one returns.
            self.link.subscribe(self.status_topic, self._on_presence)
        # Evidence uploads (edge.server.media), never through the share group: chunks spread over
        # collectors with stores of their own would never make a whole clip anywhere.
        from edge.server.media import MediaReceiver, media_paths

        paths = media_paths(db, media_dir)
        self.media: MediaReceiver | None = None
        if paths is not None:
            self.media = MediaReceiver(*paths, lambda t, p: self.link.publish(t, p, qos=1), root=root)
            self.link.subscribe(media_filter(root, commune), self.media.on_message)
            self.supervisor.watch_thread("collector-media", lambda: self.media.thread if self.media else None)
        self.link.on_connect(self._on_connect)
        self.supervisor.watch_thread("collector", lambda: self._thread)
        # As on a device (edge.daemon): a link that stops making rounds for HUNG_AFTER_S is hung, and
        # the collector ends for systemd to start it again, rather than store nothing while it looks alive.
        self.supervisor.watch("mqtt-link", self.link.alive, lambda: self.link.failure, heartbeat=self.link.heartbeat)

    @property
    def failed(self) -> threading.Event:
        """Set (with ``supervisor.reason``) when a thread of the collector has died."""
        return self.supervisor.failed

    @staticmethod
    def _status(online: bool) -> bytes:
        return compact({"v": 1, "online": online, "ts": now_iso()}).encode()

    def _on_connect(self) -> None:
        if self.share and not self.link.shared_subscriptions:
            # The link did not send the $share subscription (a protocol error on this broker): this
            # collector would receive nothing at all, so it says why and ends (exit 1) instead.
            self.supervisor.reason = (
                f"the broker {self.link.settings.address} does not support shared subscriptions (its CONNACK"
                " says so): run one edge collect without --share"
            )
            log.critical("%s", self.supervisor.reason)
            self.supervisor.failed.set()
            return
        if self.status_topic:
            self.link.publish(self.status_topic, self._status(True), retain=True)

    def _on_presence(self, topic: str, payload: bytes) -> None:
        try:
            online = json.loads(payload).get("online")
        except (ValueError, AttributeError):
            return
        if online is False and not self._leaving and self.status_topic:
            log.info("another collector of the group went offline; this one is still online")
            self.link.publish(self.status_topic, self._status(True), retain=True)

    def _on_message(self, topic: str, payload: bytes) -> None:
        with self._lock:
            self._inbox.append((topic, time.monotonic(), payload))
            self._queued_bytes += len(payload) + MESSAGE_OVERHEAD_BYTES
            while self._queued_bytes > self.max_queued_bytes and self._drop_oldest():
                pass
        self._wake.set()

    def _drop_oldest(self) -> bool:
        """Drop the message that has waited longest (caller holds _lock)."""
        if self._queues:
            topic = min(self._queues, key=lambda t: self._queues[t][0][0])
            queue = self._queues[topic]
            _, payload = queue.popleft()
            if not queue:
                del self._queues[topic]
        elif self._inbox:
            topic, _, payload = self._inbox.popleft()
        else:
            return False
        self._queued_bytes -= len(payload) + MESSAGE_OVERHEAD_BYTES
        self.stats.dropped_overload += 1
        if self.stats.dropped_overload % 1000 == 1:
            log.warning(
                "more than %d bytes wait to be stored: dropped the oldest message (on %s; %d so far), "
                "its device will send it again",
                self.max_queued_bytes,
                topic,
                self.stats.dropped_overload,
            )
        return True

    def _reject(self, reason: str, topic: str, detail: str) -> None:
        self.stats.rejected[reason] = self.stats.rejected.get(reason, 0) + 1
        log.warning("rejected a message on %s: %s %s", topic, reason, detail)

    def _validate(self, topic: str, payload: bytes) -> Received | None:
        self.stats.messages += 1
        where = parse_device_topic(topic)
        if where is None or not where.rest.startswith("evt/"):
            self._reject("wrong_topic", topic, "")
            return None
        try:
            batch: EventBatch = parse(EventBatch, payload, self.max_message_bytes)
        except BadMessage as exc:
            received = None if exc.reason == "oversized" else self._answerable(where, payload)
            if received is None:
                self._reject(exc.reason, topic, exc.detail)
            else:
                self._reject(received.rejections[0].reason, topic, received.rejections[0].detail)
            return received
        if batch.device != where.device or batch.commune != where.commune:
            self._reject("wrong_topic", topic, "device or commune differ from the topic")
            return None
        if batch.events[0].type != where.rest[len("evt/") :] or (
            (b"NaN" in payload or b"Infinity" in payload) and any(_non_finite(e.data) for e in batch.events)
        ):
            received = self._answerable(where, payload)
            if received is None:  # cannot happen for a batch that parsed, but never guess
                self._reject("schema", topic, "unanswerable")
                return None
            self._reject(received.rejections[0].reason, topic, received.rejections[0].detail)
            return received
        return Received(where, batch, batch.epoch)

    def _answerable(self, where: DeviceTopic, payload: bytes) -> Received | None:
        """Sort a message that failed validation into good events and rejections, if it is a
        version-1 batch from the device of its topic that names its epoch and seqs; else None."""
        try:
            raw = json.loads(payload)
        except (ValueError, RecursionError):
            return None
        if not isinstance(raw, dict) or set(raw) != _ENVELOPE_KEYS:
            return None
        epoch, events = raw.get("epoch"), raw.get("events")
        if (
            raw.get("v") != 1
            or raw.get("device") != where.device
            or raw.get("commune") != where.commune
            or not isinstance(epoch, str)
            or not _EPOCH_RE.match(epoch)
            or not isinstance(events, list)
            or not 1 <= len(events) <= MAX_EVENTS_PER_BATCH
        ):
            return None
        topic_type = where.rest[len("evt/") :]
        good: list[WireEvent] = []
        rejections: list[Rejection] = []
        last = 0
        for i, item in enumerate(events):
            seq = item.get("seq") if isinstance(item, dict) else None
            if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
                continue  # nothing to answer about an event without a seq; its device sends it again
            if seq <= last:
                return None  # seqs out of order: nothing in this message can be trusted
            last = seq
            try:
                event = WireEvent.model_validate(item)
            except ValidationError as exc:
                first = exc.errors(include_url=False)[0]
                where_ = ".".join(str(p) for p in first["loc"])
                rejections.append(Rejection(seq, "schema", f"events.{i}.{where_}: {first['msg']}"))
                continue
            if event.type != topic_type:
                rejections.append(Rejection(seq, "wrong_topic", f"events.{i}.type: {event.type} on evt/{topic_type}"))
            elif _non_finite(event.data):
                # Python's and pydantic's JSON readers accept these tokens; JSON does not, and the
                # stored data must stay readable by any JSON parser on the server.
                rejections.append(Rejection(seq, "schema", f"events.{i}.data: NaN or Infinity (not JSON)"))
            else:
                good.append(event)
        if not rejections:
            return None
        batch = (
            EventBatch.model_construct(v=1, device=where.device, commune=where.commune, epoch=epoch, events=good)
            if good
            else None
        )
        return Received(where, batch, epoch, rejections)

    def _take_round(self) -> list[tuple[str, bytes]]:
        # Messages are taken one topic (one device, one event type) at a time in turn, not in
        # arrival order, and a topic that had nothing waiting goes first: a backlog of one type
        # then cannot hold up a device's new events of another type, or another device, while
        # each topic keeps its own (seq) order. The events are counted roughly (by size) here; the
        # exact count is known after validation.
        taken: list[tuple[str, bytes]] = []
        with self._lock:
            fresh: dict[str, deque[tuple[float, bytes]]] = {}
            while self._inbox:
                topic, at, payload = self._inbox.popleft()
                queue = self._queues.get(topic)
                if queue is None:
                    queue = fresh.setdefault(topic, deque())
                queue.append((at, payload))
            if fresh:
                self._queues = {**fresh, **self._queues}
            budget = GROUP_MAX_EVENTS
            while self._queues and len(taken) < 256 and budget > 0:
                for topic in list(self._queues):
                    queue = self._queues.pop(topic)
                    _, payload = queue.popleft()
                    self._queued_bytes -= len(payload) + MESSAGE_OVERHEAD_BYTES
                    if queue:
                        self._queues[topic] = queue  # to the back of the round
                    taken.append((topic, payload))
                    budget -= max(1, payload.count(b'"seq":'))
                    if len(taken) >= 256 or budget <= 0:
                        break
        return taken

    def _drain(self) -> None:
        received = [r for r in (self._validate(t, p) for t, p in self._take_round()) if r is not None]
        if not received:
            return
        batches = [r.batch for r in received if r.batch is not None]
        stored = dict(zip((id(b) for b in batches), self.store.store(batches), strict=True)) if batches else {}
        # Committed: now say so, and say what will never be stored.
        for r in received:
            seqs: list[int] = []
            if r.batch is not None:
                batch, new = stored[id(r.batch)]
                self.stats.stored += new
                self.stats.duplicates += len(batch.events) - new
                self.stats.devices.add(f"{batch.commune}/{batch.device}")
                t = batch.events[0].type
                self.stats.by_type[t] = self.stats.by_type.get(t, 0) + new
                seqs = [e.seq for e in batch.events]
            self._answer(r, seqs)

    def _answer(self, r: Received, stored_seqs: list[int]) -> None:
        topic = f"{self.root}/{r.topic.commune}/dev/{r.topic.device}/evtack"
        by_reason: dict[str, list[Rejection]] = {}
        for rej in r.rejections:
            by_reason.setdefault(rej.reason, []).append(rej)
        acks: list[dict[str, Any]] = []
        for reason, rejs in by_reason.items():
            acks.append(
                {
                    "v": 1,
                    "epoch": r.epoch,
                    "ranges": [],
                    "rejected": ranges_of(x.seq for x in rejs),
                    "reason": reason,
                    "detail": rejs[0].detail[:500],
                }
            )
            self.stats.rejected_events += len(rejs)
        if acks:
            acks[0]["ranges"] = ranges_of(stored_seqs)
        elif stored_seqs:
            acks.append({"v": 1, "epoch": r.epoch, "ranges": ranges_of(stored_seqs)})
        for ack in acks:
            self.link.publish(topic, compact(ack), qos=1)
            self.stats.acks_sent += 1

    def _run(self) -> None:
        failing_since: float | None = None
        while not self._stop.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            while (self._inbox or self._queues) and not self._stop.is_set():
                try:
                    self._drain()
                except StorageError as exc:
                    # Nothing was acknowledged, so the devices will send again; keep trying, but a
                    # store that stays broken ends the collector (systemd restarts it, and says so).
                    now = time.monotonic()
                    if failing_since is None:
                        failing_since = now
                    if now - failing_since >= self.store_retry_s:
                        raise StoreError(
                            f"the collector's database {self.store.location} has failed for "
                            f"{now - failing_since:.0f} s: {exc}"
                        ) from exc
                    log.warning("could not store events (%s); they will be sent again", exc)
                    self._stop.wait(1.0)
                else:
                    failing_since = None

    def summary(self) -> dict[str, Any]:
        """Counters so far; oversized messages are counted by the link, which drops them unread."""
        out = self.stats.as_dict()
        if self.media is not None:
            out["media"] = self.media.stats.as_dict()
        if self.link.stats.oversized_dropped:
            out["rejected"]["oversized"] = out["rejected"].get("oversized", 0) + self.link.stats.oversized_dropped
        return out

    def alive(self) -> bool:
        return thread_alive(self._thread)

    def start(self) -> Collector:
        self._thread = threading.Thread(target=self._run, name="collector", daemon=True)
        self._thread.start()
        if self.media is not None:
            self.media.start()
        self.link.start()
        self.supervisor.start()
        return self

    def stop(self) -> None:
        if self._stop.is_set():
            return
        self.supervisor.stop()
        self._leaving = True
        if self.status_topic and self.link.connected.is_set():
            with contextlib.suppress(Exception):
                self.link.publish(self.status_topic, self._status(False), retain=True).result(2.0)
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5)
        self.link.stop()
        if self.media is not None:
            self.media.stop()
        self.store.close()
