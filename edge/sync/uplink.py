"""Sending the outbox to the collector, with end-to-end acknowledgements.

The uplink reads pending events in ``seq`` order, packs them into batches of one type, and
publishes them with QoS 1, keeping up to ``max_inflight`` batches waiting for the collector's
``evtack``. An event leaves the pending set only when an ``evtack`` covers it; batches not covered
within ``ack_timeout_s`` are sent again, and after a reconnect everything pending is.

Two lanes keep new events prompt while a backlog drains: events appended after the connection
came up (the *live* lane) go out first; the backlog (everything that was pending when it came up)
fills the rest of the window but its last slot, oldest first, so it still arrives in ``seq``
order per type.

The uplink follows the collector's presence (``{root}/{commune}/server/status``, retained, with a
will). While the collector is known to be offline nothing is sent; when it comes back, sending
starts again from the oldest pending event. With no presence published at all, the uplink simply
relies on the ack timeout.

No event may hold the others up. Batches are kept under the broker's announced Maximum Packet Size;
a batch the broker will not take at its size (it dropped the connection over it) is split, and one
event that is too large on its own is set aside as undeliverable (:mod:`edge.sync.undeliverable`),
as are events the collector answers with a rejection. A batch refused for another reason (the ACL,
a quota) is not the events' fault: it stays pending and is tried again later, outside the window.
"""

from __future__ import annotations

import bisect
import functools
import logging
import socket
import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import Future
from dataclasses import dataclass, field

from edge.config import SyncConfig
from edge.exceptions import BadMessage, DroppedAfterSend, LinkError, MessageRefused, PacketTooLarge, StoreError
from edge.messages import DeviceStatus, EvtAck, ServerStatus, parse
from edge.store import Outbox, StoredEvent
from edge.supervisor import Heartbeat, thread_alive, thread_failure
from edge.sync.link import MqttLink
from edge.sync.undeliverable import set_aside
from edge.topics import Topics

log = logging.getLogger(__name__)

#: Bounds of what the network thread hands over. Both drop the oldest (and count it): a lost evtack
#: only means its events are sent again and acknowledged again, and a lost refusal only means its
#: batch waits for the ack timeout and is refused again. Blocking instead would stall the network
#: thread, and with it keepalives and every other acknowledgement.
ACKS_MAX = 1000
REFUSALS_MAX = 1000
#: Batches refused for a reason other than size wait this many ack timeouts before they are tried
#: again, at most this many of them (the oldest is forgotten first: its events stay pending in the
#: store and go out again with the next connection).
PARK_TIMEOUTS = 3
PARKED_MAX = 256
#: A batch the connection drops right after, on this many connections in a row, is taken as too large
#: for the broker (split); one event alone, on this many more, is set aside. Chaos (a broker killed,
#: a network cut) hits the same batch in the instant before its PUBACK twice in a row next to never.
SUSPECT_SPLIT_AFTER = 2
SUSPECT_SET_ASIDE_AFTER = 3
#: Room for an event's envelope in a batch (id, seq, type, priority, ts, clock_synced, separators)
#: on top of its data; generous, so that a batch's estimate is never below its real size.
EVENT_OVERHEAD_BYTES = 250


@dataclass
class Batch:
    type: str
    seqs: list[int]
    sent_at: float
    sends: int = 1
    bytes: int = 0


@dataclass
class UplinkStats:
    batches_sent: int = 0
    events_sent: int = 0
    resent_batches: int = 0
    events_acked: int = 0
    evtacks: int = 0
    evtack_rejected: dict[str, int] = field(default_factory=dict)
    last_ack_at: float | None = None
    #: Batches split because the broker would not take them at their size.
    split_batches: int = 0
    #: Events set aside as undeliverable (too large for the broker, or rejected by the collector).
    set_aside: int = 0
    #: Batches the broker refused for another reason (tried again later).
    refused: int = 0
    acks_dropped: int = 0
    refusals_dropped: int = 0
    parked_dropped: int = 0

    def reject(self, reason: str) -> None:
        self.evtack_rejected[reason] = self.evtack_rejected.get(reason, 0) + 1


class Uplink:
    """Moves events from an Outbox to the broker until ``stop()``."""

    def __init__(
        self,
        outbox: Outbox,
        link: MqttLink,
        topics: Topics,
        settings: SyncConfig,
        *,
        max_incoming_bytes: int = 64 * 1024,
        poll_interval_s: float = 1.0,
    ) -> None:
        self.outbox = outbox
        self.link = link
        self.topics = topics
        self.settings = settings
        self.max_incoming_bytes = max_incoming_bytes
        self.poll_interval_s = poll_interval_s
        self.stats = UplinkStats()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._acks: deque[bytes] = deque(maxlen=ACKS_MAX)
        self._refusals: deque[tuple[Batch, MessageRefused | DroppedAfterSend]] = deque(maxlen=REFUSALS_MAX)
        # The batch the connection last dropped right after, and on how many connections in a row.
        self._suspect: tuple[tuple[int, ...], int] = ((), 0)
        self._parked: OrderedDict[int, tuple[float, Batch]] = OrderedDict()  # first seq -> (retry at, batch)
        # A size the broker did not take (it dropped the connection over it without announcing a
        # limit): later batches stay under it.
        self._learned_max_bytes: int | None = None
        # Server presence (retained, with a will): None until seen. While the collector is known
        # to be offline nothing is sent, so no resend round can straddle its return.
        self._server_online: bool | None = None
        self._restart_lanes = False
        self._inflight: dict[int, Batch] = {}  # keyed by first seq; dicts keep send order
        self._generation = -1
        self._tail = 0  # backlog lane: last seq sent
        self._head_mark = 0  # backlog ends here; the live lane starts after it
        self._head = 0  # live lane: last seq sent
        self._thread: threading.Thread | None = None
        #: Stamped once per round of the sending thread (a round waits at most poll_interval_s): one
        #: that does not come back (a store that does not answer) is a hung uplink.
        self.heartbeat = Heartbeat()
        self._wake_sock: socket.socket | None = None
        self._prefix = (
            f'{{"v":1,"device":"{topics.device}","commune":"{topics.commune}","epoch":"{outbox.epoch}","events":['
        ).encode()

        link.subscribe(topics.evtack, self._on_evtack)
        link.subscribe(topics.server_status, self._on_server_status)
        link.on_connect(self.wake)
        outbox.add_listener(lambda _seq: self.wake())

    # -- wiring ---------------------------------------------------------------------------------

    def wake(self) -> None:
        self._wake.set()

    def resend_all(self) -> None:
        """Send every pending event again now, oldest first (``sync.resend``)."""
        self._restart_lanes = True
        self._wake.set()

    def _on_evtack(self, topic: str, payload: bytes) -> None:
        if len(self._acks) == ACKS_MAX:
            self.stats.acks_dropped += 1  # the append below pushes the oldest out
        self._acks.append(payload)
        self._wake.set()

    def _on_published(self, batch: Batch, fut: Future[object]) -> None:
        # Network thread: only hand a refusal over. A lost connection needs nothing here (every
        # pending event goes out again on the next one), and success waits for the evtack.
        exc = fut.exception()
        if isinstance(exc, (MessageRefused, DroppedAfterSend)):
            if len(self._refusals) == REFUSALS_MAX:
                self.stats.refusals_dropped += 1
            self._refusals.append((batch, exc))
            self._wake.set()

    def _on_server_status(self, topic: str, payload: bytes) -> None:
        try:
            status: ServerStatus = parse(ServerStatus, payload, self.max_incoming_bytes)
        except BadMessage as exc:
            log.warning("ignored a bad server status: %s", exc)
            return
        was = self._server_online
        self._server_online = status.online
        if status.online and was is False:
            # The collector is back. Start again from the oldest pending event so the backlog
            # arrives in seq order; its status is published after its subscription is active.
            self._restart_lanes = True
        self._wake.set()

    def _listen_wake_socket(self, sock: socket.socket) -> None:
        sock.settimeout(1.0)
        while not self._stop.is_set():
            try:
                sock.recv(64)
            except TimeoutError:
                continue
            except OSError:
                return
            self._wake.set()

    # -- acknowledgements -----------------------------------------------------------------------

    def _handle_acks(self) -> None:
        while self._acks:
            payload = self._acks.popleft()
            try:
                ack: EvtAck = parse(EvtAck, payload, self.max_incoming_bytes)
            except BadMessage as exc:
                self.stats.reject(exc.reason)
                self.outbox.bump(f"evtack_rejected_{exc.reason}")
                log.warning("rejected an evtack: %s", exc)
                continue
            if ack.epoch != self.outbox.epoch:
                self.stats.reject("wrong_epoch")
                log.info("ignored an evtack for epoch %s (ours is %s)", ack.epoch, self.outbox.epoch)
                continue
            ranges = sorted(ack.ranges)
            n = self.outbox.mark_acked(ranges) if ranges else 0
            self.stats.evtacks += 1
            self.stats.events_acked += n
            self.stats.last_ack_at = time.time()
            if ack.rejected:
                reason = f"{ack.reason}: {ack.detail}" if ack.detail else str(ack.reason)
                self.stats.set_aside += len(set_aside(self.outbox, ack.rejected, "collector", reason))
            done = sorted([*ranges, *ack.rejected])
            starts = [a for a, _ in done]
            for first, batch in list(self._inflight.items()):
                if all(_covered(starts, done, s) for s in batch.seqs):
                    del self._inflight[first]

    # -- refusals -------------------------------------------------------------------------------

    def _handle_refusals(self) -> None:
        while self._refusals:
            batch, exc = self._refusals.popleft()
            if self._inflight.get(batch.seqs[0]) is not batch:
                continue  # acknowledged, resent or forgotten meanwhile
            del self._inflight[batch.seqs[0]]
            self._refused(batch, exc)

    def _refused(self, batch: Batch, exc: MessageRefused | DroppedAfterSend) -> None:
        """The broker will not take ``batch`` (already out of the window), or may not."""
        events = self.outbox.pending_in(batch.seqs)
        if not events:
            return
        if isinstance(exc, DroppedAfterSend):
            seqs, times = self._suspect
            times = times + 1 if seqs == tuple(batch.seqs) else 1
            self._suspect = (tuple(batch.seqs), times)
            needed = SUSPECT_SPLIT_AFTER if len(events) > 1 else SUSPECT_SET_ASIDE_AFTER
            log.debug(
                "the connection dropped right after batch %d..%d (%d in a row)", batch.seqs[0], batch.seqs[-1], times
            )
            if times < needed:
                return  # the next connection sends it again, and shows whether it was chance
            log.warning("the connection dropped right after the same batch %d times in a row", times)
        elif not isinstance(exc, PacketTooLarge):
            # Not the events' fault (the ACL, a quota): they stay pending and are tried again later,
            # outside the window so that other types keep flowing.
            self.stats.refused += 1
            log.warning("the broker refused a batch of %d %s event(s): %s", len(events), batch.type, exc)
            self._parked[batch.seqs[0]] = (time.monotonic() + PARK_TIMEOUTS * self.settings.ack_timeout_s, batch)
            while len(self._parked) > PARKED_MAX:
                self._parked.popitem(last=False)
                self.stats.parked_dropped += 1
            return
        if len(events) == 1:
            seq = events[0].seq
            self.stats.set_aside += len(
                set_aside(self.outbox, [(seq, seq)], "broker", f"too large for the broker: {exc}")
            )
            return
        self.stats.split_batches += 1
        # Halving converges on the event to blame in a few connections, whatever the real limit.
        self._learned_max_bytes = min(self._learned_max_bytes or batch.bytes, max(1024, batch.bytes // 2))
        log.warning("the broker will not take a %d-byte batch (%s); splitting it", batch.bytes, exc)
        if self.link.connected.is_set():
            half = len(events) // 2
            self._publish(events[:half])
            self._publish(events[half:])
        # Otherwise the next connection sends everything pending again, under the learned size.

    def _retry_parked(self) -> None:
        now = time.monotonic()
        while self._parked:
            first, (retry_at, batch) = next(iter(self._parked.items()))
            if retry_at > now:
                return
            del self._parked[first]
            events = self.outbox.pending_in(batch.seqs)
            if events:
                self._publish(events)

    # -- sending --------------------------------------------------------------------------------

    def _publish(self, events: list[StoredEvent]) -> None:
        """Publish events (one type, seq order) as one batch and track it."""
        payload = self._prefix + ",".join(e.wire_json() for e in events).encode() + b"]}"
        first = events[0].seq
        old = self._inflight.get(first)
        batch = Batch(
            events[0].type,
            [e.seq for e in events],
            time.monotonic(),
            sends=old.sends + 1 if old else 1,
            bytes=len(payload),
        )
        fut = self.link.publish(self.topics.evt(events[0].type), payload, qos=1)
        if fut.done():
            exc = fut.exception()
            if isinstance(exc, MessageRefused):
                self._inflight.pop(first, None)
                self._refused(batch, exc)
                return
            if exc is not None:
                raise LinkError(str(exc))
        self._inflight[first] = batch
        fut.add_done_callback(functools.partial(self._on_published, batch))
        self.stats.batches_sent += 1
        self.stats.events_sent += len(events)

    def _max_batch_bytes(self, event_type: str) -> int:
        limit = self.settings.batch_max_bytes
        broker = self.link.max_payload_bytes(self.topics.evt(event_type))
        if broker is not None:
            limit = min(limit, broker - len(self._prefix) - 2)
        if self._learned_max_bytes is not None:
            limit = min(limit, self._learned_max_bytes - len(self._prefix) - 2)
        return limit

    def _split(self, events: list[StoredEvent]) -> list[list[StoredEvent]]:
        """Group a seq-ordered chunk into batches of one type, within the size limits (the
        configured ones and the broker's); an event over the limit on its own goes alone."""
        by_type: dict[str, list[list[StoredEvent]]] = {}
        sizes: dict[str, int] = {}
        limits: dict[str, int] = {}
        limit_n = self.settings.batch_max_events
        for ev in events:
            groups = by_type.setdefault(ev.type, [[]])
            limit_b = limits.get(ev.type)
            if limit_b is None:
                limit_b = limits[ev.type] = self._max_batch_bytes(ev.type)
            size = len(ev.data_json.encode()) + EVENT_OVERHEAD_BYTES
            if groups[-1] and (len(groups[-1]) >= limit_n or sizes[ev.type] + size > limit_b):
                groups.append([])
                sizes[ev.type] = 0
            groups[-1].append(ev)
            sizes[ev.type] = sizes.get(ev.type, 0) + size
        batches = [g for groups in by_type.values() for g in groups]
        batches.sort(key=lambda g: g[0].seq)
        return batches

    def _has_room(self, backlog: bool) -> bool:
        # The backlog lane leaves the last slot of the window to the live lane, so a new event
        # never waits for an evtack before it can be sent.
        limit = self.settings.max_inflight
        if backlog and limit > 1:
            limit -= 1
        return len(self._inflight) < limit

    def _send_lane(self, after: int, up_to: int | None) -> int:
        """Send pending events after ``after`` (up to ``up_to``: the backlog lane) while the
        window has room; returns the last seq sent."""
        backlog = up_to is not None
        while self._has_room(backlog) and not self._stop.is_set():
            chunk = self.outbox.pending(after, self.settings.batch_max_events, up_to)
            if not chunk:
                break
            for batch in self._split(chunk):
                self._publish(batch)
            after = chunk[-1].seq
            if backlog and self._wake.is_set():
                # A new event or an evtack arrived while the window was being refilled (which
                # takes a while when it is wide): let the step start over, live lane first.
                break
        return after

    def _resend_due(self) -> None:
        now = time.monotonic()
        for first, batch in list(self._inflight.items()):
            if now - batch.sent_at < self.settings.ack_timeout_s:
                continue
            events = self.outbox.pending_in(batch.seqs)
            del self._inflight[first]
            if not events:
                continue  # acknowledged or evicted meanwhile
            self.stats.resent_batches += 1
            self._publish(events)

    def _new_connection(self) -> None:
        """Forget what is in flight and send every pending event again, oldest first."""
        self._generation = self.link.generation
        self._inflight.clear()
        self._parked.clear()
        self._tail = 0
        self._head_mark = self._head = self.outbox.last_seq()

    def _step(self) -> None:
        self._handle_acks()
        # Before a reconnect clears the window: a batch the broker dropped the connection over
        # teaches the size to stay under on the next one.
        self._handle_refusals()
        if not self.link.connected.is_set():
            return
        if self._server_online is False:
            return
        if self.link.generation != self._generation or self._restart_lanes:
            self._restart_lanes = False
            self._new_connection()
        self._resend_due()
        self._retry_parked()
        self._head = self._send_lane(self._head, None)
        if self._tail < self._head_mark:
            self._tail = self._send_lane(self._tail, self._head_mark)

    def _next_timeout(self) -> float:
        due = [b.sent_at + self.settings.ack_timeout_s for b in self._inflight.values()]
        if self._parked:
            due.append(next(iter(self._parked.values()))[0])
        if not due:
            return self.poll_interval_s
        return max(0.01, min(self.poll_interval_s, min(due) - time.monotonic()))

    def _run(self) -> None:
        while not self._stop.is_set():
            self.heartbeat.beat()
            self._wake.wait(self._next_timeout())
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                # Also runs every poll interval without a wake-up: a cheap indexed query that
                # notices events appended by a process that could not reach the wake socket.
                self._step()
            except LinkError as exc:
                log.info("sending paused: %s", exc)
            except StoreError:
                log.exception("event store failed while sending")
                raise
            except Exception:
                log.exception("uplink step failed; retrying")
                time.sleep(0.5)

    # -- lifetime -------------------------------------------------------------------------------

    def start(self, wake_socket: socket.socket | None = None) -> Uplink:
        self._thread = threading.Thread(target=self._run, name="uplink", daemon=True)
        self._thread.start()
        if wake_socket is not None:
            self._wake_sock = wake_socket
            threading.Thread(target=self._listen_wake_socket, args=(wake_socket,), name="wake", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._wake_sock is not None:
            self._wake_sock.close()

    def alive(self) -> bool:
        """Whether the sending thread runs (until ``stop()``)."""
        return thread_alive(self._thread)

    @property
    def failure(self) -> BaseException | None:
        """What the sending thread died of, if it did."""
        return thread_failure(self._thread)

    @property
    def inflight(self) -> int:
        return len(self._inflight)


def _covered(starts: list[int], ranges: list[tuple[int, int]], seq: int) -> bool:
    i = bisect.bisect_right(starts, seq) - 1
    return i >= 0 and ranges[i][0] <= seq <= ranges[i][1]


def status_payload(online: bool, boot: int, version: str, roles: list[str], ts: str) -> bytes:
    """The retained ``status`` message (and, with ``online=False``, the will)."""
    status = DeviceStatus(online=online, boot=boot, version=version, roles=roles, ts=ts)
    return status.model_dump_json().encode()
