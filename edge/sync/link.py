"""The one boundary between paho-mqtt and the rest of the project.

paho's callbacks become explicit state here: a ``connected`` event, a connection generation
number, futures for publishes (resolved on PUBACK), and a handler call per incoming message.
The network loop runs in one thread that also owns reconnection, with capped exponential backoff
and jitter so that a commune's devices do not all knock on the broker at once after an outage.

paho keeps its outgoing queue in memory only; durability is the outbox's job, never this one's. So
resending is the callers' job too: every new connection starts with paho's in-flight state empty
(paho would otherwise send its own copies again after a reconnect, behind the back of callers whose
futures already failed), and a publish future is keyed by (connection generation, message id), so
an acknowledgement can only ever resolve the publish it belongs to.

Futures resolve on the network thread and run their done-callbacks there: a callback must only
hand the outcome over (a queue, an event), never touch SQLite or block.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import socket
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge.config import BrokerAddress
from edge.exceptions import DroppedAfterSend, LinkError, MessageRefused, PacketTooLarge
from edge.retry import Backoff
from edge.supervisor import Heartbeat, thread_alive, thread_failure

log = logging.getLogger(__name__)

MessageHandler = Callable[[str, bytes], None]

#: Acknowledgements that arrived before ``publish()`` registered their future wait here, at most this
#: many (the oldest go first, counted as ``stats.stale_pubacks``). Only publishes in progress can
#: legitimately have one, so a handful is the real need.
EARLY_MAX = 256
#: A connection lost this soon after the oldest unacknowledged message was sent is reported to
#: that message's owner as DroppedAfterSend: the broker may have dropped us over it.
SUSPECT_WINDOW_S = 10.0


@dataclass(frozen=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


def _routed(topic_filter: str) -> str:
    """The filter that messages of a subscription arrive under: a shared subscription's
    ``$share/{group}/`` prefix is not part of the topics the broker delivers."""
    if topic_filter.startswith("$share/"):
        parts = topic_filter.split("/", 2)
        if len(parts) == 3:
            return parts[2]
    return topic_filter


@dataclass
class LinkSettings:
    """Everything needed to reach a broker."""

    address: BrokerAddress
    client_id: str
    keepalive_s: int = 30
    session_expiry_s: int = 3600
    clean_start: bool = False
    username: str | None = None
    password: str | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    max_incoming_bytes: int = 64 * 1024
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 60.0
    #: The reconnect backoff starts again from ``reconnect_min_s`` only after a connection has stayed
    #: up this long: two devices cloned from one SD card (one client id) then take each other over
    #: ever more rarely instead of every half second.
    stable_after_s: float = 30.0
    max_inflight: int = 100
    will: Will | None = None


@dataclass
class LinkStats:
    connects: int = 0
    disconnects: int = 0
    connect_failures: int = 0
    oversized_dropped: int = 0
    handler_errors: int = 0
    #: Acknowledgements that matched no publish of this connection (dropped, never resolving another).
    stale_pubacks: int = 0
    #: Publishes refused for their size, by this link (over the broker's announced maximum) or by the
    #: broker (it dropped the connection over the packet).
    too_large: int = 0
    last_error: str = ""
    subscriptions: list[tuple[str, int]] = field(default_factory=list)


def _no_delay(_client: mqtt.Client, _userdata: Any, sock: Any) -> None:
    """Send small packets at once (TCP_NODELAY). MQTT is a conversation of small packets, a batch
    then its PUBACK, an evtack then its PUBACK; with Nagle's algorithm on, each one that follows an
    unacknowledged one waits for the peer's delayed ACK, about 20-40 ms on Linux, which was most of
    the time from a commit on the device to its evtack."""
    with contextlib.suppress(OSError, AttributeError):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _queue_only(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    """paho's "socket wants writing" hook: nothing to do, loop() selects for writing by itself."""


class MqttLink:
    """An MQTT 5 connection that keeps itself connected until ``stop()``."""

    def __init__(self, settings: LinkSettings) -> None:
        self.settings = settings
        self.stats = LinkStats()
        self.connected = threading.Event()
        self.generation = 0  # counts successful connections; lets users notice a reconnect
        #: The Maximum Packet Size the broker announced in its CONNACK (None: it set no limit).
        self.max_packet_bytes: int | None = None
        #: Whether the broker takes shared subscriptions (``$share/...``), as its CONNACK said (MQTT 5:
        #: absent means yes). Sending one to a broker that said no is a protocol error: ejabberd drops
        #: the connection over it, on every reconnect.
        self.shared_subscriptions = True
        self._handlers: list[tuple[str, MessageHandler]] = []
        self._on_connect_hooks: list[Callable[[], None]] = []
        self._on_disconnect_hooks: list[Callable[[], None]] = []
        self.on_oversized: Callable[[str, int], None] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: Stamped by the network thread at every round: each pass of paho's loop once connected, each
        #: second of the wait between attempts. Not during a connection attempt, which blocks in
        #: paho (DNS, TCP, TLS) and then waits for CONNACK for up to the keepalive: an attempt that
        #: outlasts the bound is a hung link (see edge.supervisor.HUNG_AFTER_S).
        self.heartbeat = Heartbeat()
        self._lock = threading.Lock()
        # Both keyed by (generation, mid): a message id is only unique within one connection.
        self._pending: dict[tuple[int, int], tuple[Future[ReasonCode | None], float]] = {}  # and when sent
        self._early: OrderedDict[tuple[int, int], tuple[float, ReasonCode | None]] = OrderedDict()
        self._connected_at: float | None = None
        # The message the last connection dropped over, and what to tell its owner.
        self._dropped_over: tuple[tuple[int, int] | None, Callable[[], LinkError]] | None = None
        self._backoff = Backoff(settings.reconnect_min_s, settings.reconnect_max_s)
        self._client = self._make_client()

    # -- set-up ---------------------------------------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        s = self.settings
        client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=s.client_id,
            protocol=mqtt.MQTTv5,
        )
        client.max_inflight_messages_set(s.max_inflight)
        client.max_queued_messages_set(0)
        if s.username:
            client.username_pw_set(s.username, s.password)
        if s.address.tls:
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(s.ca_file) if s.ca_file else None)
            if s.cert_file and s.key_file:
                context.load_cert_chain(str(s.cert_file), str(s.key_file))
            client.tls_set_context(context)
        if s.will:
            client.will_set(s.will.topic, s.will.payload, s.will.qos, s.will.retain)
        # This link runs paho's loop() on its own thread, which paho cannot see; without this it writes
        # a publish straight to the socket from the caller's thread while the network thread reads
        # it. Over TLS, two threads in one SSL object corrupt the stream ("bad record mac", then the
        # broker drops us). With a write-registration callback paho only queues the packet and wakes
        # loop(), which does every read and write on the network thread.
        client.on_socket_register_write = _queue_only
        client.on_socket_open = _no_delay
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        return client

    def subscribe(self, topic_filter: str, handler: MessageHandler, qos: int = 1) -> None:
        """Route messages matching ``topic_filter`` to ``handler(topic, payload)``.

        Subscriptions are (re)made on every connection. Handlers run on the network thread and
        must be quick; oversized payloads never reach them.
        """
        self._handlers.append((topic_filter, handler))
        self.stats.subscriptions.append((topic_filter, qos))
        if self.connected.is_set():
            self._subscribe(self._client, topic_filter, qos)

    def _subscribe(self, client: mqtt.Client, topic_filter: str, qos: int) -> None:
        if topic_filter.startswith("$share/") and not self.shared_subscriptions:
            self.stats.last_error = f"not subscribed to {topic_filter}: the broker has no shared subscriptions"
            log.error("not subscribing to %s: the broker does not support shared subscriptions", topic_filter)
            return
        client.subscribe(topic_filter, qos)

    def on_connect(self, hook: Callable[[], None]) -> None:
        """Call ``hook()`` on the network thread after each successful connection."""
        self._on_connect_hooks.append(hook)

    def on_disconnect(self, hook: Callable[[], None]) -> None:
        self._on_disconnect_hooks.append(hook)

    # -- paho callbacks (network thread) ---------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Any) -> None:
        if reason.is_failure:
            self.stats.connect_failures += 1
            self.stats.last_error = f"connection refused: {reason}"
            log.warning("broker %s refused the connection: %s", self.settings.address, reason)
            return
        # paho is about to send its own copies of whatever was in flight on the last connection.
        # Their futures failed when it dropped and their owners send them again (the uplink from the
        # outbox, the reply sender from the journal): one owner of resends, and no PUBACK of an old
        # copy can turn up on this connection.
        client.drop_out_messages()
        self.max_packet_bytes = getattr(properties, "MaximumPacketSize", None)
        self.shared_subscriptions = bool(getattr(properties, "SharedSubscriptionAvailable", 1))
        with self._lock:
            self._early.clear()
            self.generation += 1
        self._connected_at = time.monotonic()
        self.stats.connects += 1
        for topic_filter, qos in self.stats.subscriptions:
            self._subscribe(client, topic_filter, qos)
        self.connected.set()
        log.info("connected to %s", self.settings.address)
        for hook in self._on_connect_hooks:
            try:
                hook()
            except Exception:
                log.exception("on-connect hook failed")

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Any
    ) -> None:
        # In wire order: the broker acknowledges in order, so the first of these still waiting is the
        # packet it was reading when it gave up.
        unacknowledged = [m.mid for m in client.drop_out_messages()]
        from_broker = getattr(flags, "is_disconnect_packet_from_server", False)
        with self._lock:
            # Under the lock, together with _dropped_over: a publish() that finds the link down
            # when it registers its future also finds whether the drop was over its message.
            was_connected = self.connected.is_set()
            self.connected.clear()
            pending, self._pending = self._pending, {}
            self._early.clear()
            culprit = (self.generation, unacknowledged[0]) if unacknowledged else None
            blame: Callable[[], LinkError] | None = None
            if culprit is not None and from_broker and _is_packet_too_large(reason):
                # The broker announced no limit (or a larger one) and said it dropped us over this.
                blame = functools.partial(
                    PacketTooLarge, f"the broker dropped the connection over this message: {reason}"
                )
            elif culprit is not None and not from_broker and _is_lost(reason) and not self._stop.is_set():
                # Most often the broker did not get to say why (it closed the socket while the rest
                # of a large packet was still being written): let the owner see whether it repeats.
                # A broker that says why (taken over, shutting down) was not choking on a packet, a
                # keepalive timeout is a silent network, not a refusal, and a normal disconnection
                # is our own.
                sent = pending[culprit][1] if culprit in pending else time.monotonic()
                if time.monotonic() - sent <= SUSPECT_WINDOW_S:
                    blame = functools.partial(
                        DroppedAfterSend, f"the connection dropped right after this message: {reason}"
                    )
            # A publish() that had not registered its future yet looks here (see publish()).
            self._dropped_over = (culprit, blame) if blame is not None else None
        if was_connected:
            self.stats.disconnects += 1
            self.stats.last_error = f"disconnected: {reason}"
            log.warning("disconnected from %s: %s", self.settings.address, reason)
        for key, (fut, _) in pending.items():
            if fut.done():
                continue
            if key == culprit and blame is not None:
                fut.set_exception(self._blame(blame))
            else:
                fut.set_exception(LinkError(f"disconnected before the broker acknowledged: {reason}"))
        for hook in self._on_disconnect_hooks:
            try:
                hook()
            except Exception:
                log.exception("on-disconnect hook failed")

    def _blame(self, blame: Callable[[], LinkError]) -> LinkError:
        exc = blame()
        if isinstance(exc, PacketTooLarge):
            self.stats.too_large += 1
        return exc

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode | None, properties: Any
    ) -> None:
        # paho calls this holding its own message lock; publish() never holds self._lock while
        # calling into paho, so taking it here cannot deadlock.
        with self._lock:
            key = (self.generation, mid)
            entry = self._pending.pop(key, None)
            if entry is None:
                # publish() has not registered this one yet (or nobody waits for it any more).
                self._early[key] = (time.monotonic(), reason)
                while len(self._early) > EARLY_MAX:
                    self._early.popitem(last=False)
                    self.stats.stale_pubacks += 1
                return
        _resolve(entry[0], reason)

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: list[ReasonCode], properties: Any
    ) -> None:
        for reason in reasons:
            if reason.is_failure:
                log.error("subscription refused by the broker: %s", reason)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if len(message.payload) > self.settings.max_incoming_bytes:
            self.stats.oversized_dropped += 1
            log.warning(
                "dropped a %d-byte message on %s (limit %d)",
                len(message.payload),
                message.topic,
                self.settings.max_incoming_bytes,
            )
            if self.on_oversized is not None:
                try:
                    self.on_oversized(message.topic, len(message.payload))
                except Exception:
                    log.exception("on_oversized hook failed")
            return
        try:
            topic = message.topic
        except UnicodeDecodeError:
            self.stats.handler_errors += 1
            return
        for topic_filter, handler in self._handlers:
            if mqtt.topic_matches_sub(_routed(topic_filter), topic):
                try:
                    handler(topic, bytes(message.payload))
                except Exception:
                    self.stats.handler_errors += 1
                    log.exception("handler for %s failed", topic)

    # -- publishing -----------------------------------------------------------------------------

    def max_payload_bytes(self, topic: str) -> int | None:
        """The largest payload the broker takes on ``topic`` (None: no announced limit)."""
        limit = self.max_packet_bytes
        if limit is None:
            return None
        # Fixed header (up to 5 bytes), topic, packet id, and room for the expiry property.
        return max(0, limit - 5 - (2 + len(topic.encode())) - 2 - 6)

    def publish(
        self,
        topic: str,
        payload: bytes | str,
        qos: int = 1,
        retain: bool = False,
        expiry_s: int | None = None,
    ) -> Future[ReasonCode | None]:
        """Send a message; the future resolves when the broker acknowledges it (QoS 1), fails with
        PacketTooLarge if the broker will not take it at its size, with MessageRefused if the broker
        refuses it, or with LinkError if the connection drops first.

        The future resolves on the network thread: done-callbacks must be quick and must not touch
        SQLite (hand the outcome to a thread of your own)."""
        props = None
        if expiry_s is not None:
            props = Properties(PacketTypes.PUBLISH)
            props.MessageExpiryInterval = max(1, int(expiry_s))
        fut: Future[ReasonCode | None] = Future()
        if not self.connected.is_set():
            fut.set_exception(LinkError("not connected"))
            return fut
        data = payload.encode() if isinstance(payload, str) else payload
        size = _packet_bytes(topic, len(data), qos, props)
        limit = self.max_packet_bytes
        if limit is not None and size > limit:
            # MQTT 5: a client must not send a packet over the maximum the server announced (the
            # broker would drop the connection, and the same packet would go out again after it).
            self.stats.too_large += 1
            fut.set_exception(PacketTooLarge(f"a {size}-byte packet, over the broker's maximum of {limit} bytes"))
            return fut
        with self._lock:
            generation = self.generation
        started = time.monotonic()
        info = self._client.publish(topic, data, qos=qos, retain=retain, properties=props)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            fut.set_exception(LinkError(f"publish failed: {mqtt.error_string(info.rc)}"))
            return fut
        if qos == 0:
            fut.set_result(None)  # nothing will acknowledge it; "handed to the network thread" is all
            return fut
        key = (generation, info.mid)
        dropped = None
        with self._lock:
            if self.generation != generation or not self.connected.is_set():
                # The connection changed under this publish: whether it went out on the old one or
                # the new one, its acknowledgement can no longer be told apart. Its owner resends.
                lost = True
                dropped = self._dropped_over
            else:
                lost = False
                early = self._early.pop(key, None)
                if early is not None and early[0] < started:
                    self.stats.stale_pubacks += 1  # from before this publish: not ours
                    early = None
                if early is None:
                    self._pending[key] = (fut, started)
        if lost:
            if dropped is not None and dropped[0] == key:
                # The connection dropped over this very message before its future was registered.
                fut.set_exception(self._blame(dropped[1]))
            else:
                fut.set_exception(LinkError("the connection changed while publishing"))
        elif early is not None:
            _resolve(fut, early[1])
        return fut

    # -- the network thread ---------------------------------------------------------------------

    def start(self) -> MqttLink:
        self._thread = threading.Thread(target=self._run, name="mqtt-link", daemon=True)
        self._thread.start()
        return self

    def alive(self) -> bool:
        """Whether the network thread runs (until ``stop()``)."""
        return thread_alive(self._thread)

    @property
    def failure(self) -> BaseException | None:
        """What the network thread died of, if it did."""
        return thread_failure(self._thread)

    def wait_connected(self, timeout: float) -> bool:
        return self.connected.wait(timeout)

    def _connect_properties(self) -> Properties:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.settings.session_expiry_s
        return props

    def _run(self) -> None:
        s = self.settings
        # connect_async() only records where to connect; every attempt below is a reconnect().
        self._client.connect_async(
            s.address.host,
            s.address.port,
            s.keepalive_s,
            clean_start=s.clean_start,
            properties=self._connect_properties(),
        )
        while not self._stop.is_set():
            self._connected_at = None
            self.heartbeat.beat(f"connecting to {s.address}")
            try:
                self._client.reconnect()
            except (OSError, ssl.SSLError, ValueError) as exc:
                self.stats.connect_failures += 1
                self.stats.last_error = f"cannot connect: {exc}"
                log.info("cannot connect to %s: %s", s.address, exc)
            else:
                while not self._stop.is_set():
                    if self._client.loop(timeout=1.0) != mqtt.MQTT_ERR_SUCCESS:
                        break
                    if self.connected.is_set():  # until CONNACK, still the attempt
                        self.heartbeat.beat()
                if self.connected.is_set():
                    # loop() failed without paho calling on_disconnect (e.g. a socket error).
                    lost = ReasonCode(PacketTypes.DISCONNECT, "Unspecified error")
                    self._on_disconnect(self._client, None, None, lost, None)
            up = self._connected_at
            if up is not None and time.monotonic() - up >= s.stable_after_s:
                # Only a connection that lasted earns a quick reconnect; one that is taken over
                # (or refused) right away keeps backing off.
                self._backoff.reset()
            if self._pause(self._backoff.next()):
                break

    def _pause(self, seconds: float) -> bool:
        """Wait ``seconds`` before the next attempt; True if stopped meanwhile. Waiting is this loop's
        work while the broker is away (offline is healthy), so each second of it is a round."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.heartbeat.beat()
            if self._stop.wait(min(left, 1.0)):
                return True
        return False

    def stop(self, timeout: float = 5.0) -> None:
        """Disconnect cleanly (no will is published) and stop the network thread. Idempotent."""
        if self._stop.is_set():
            return
        self._stop.set()
        with contextlib.suppress(Exception):
            self._client.disconnect()
        if self._thread is not None:
            self._thread.join(timeout)
        with contextlib.suppress(Exception):
            self._client.loop(timeout=0.1)
        self.connected.clear()


def _resolve(fut: Future[ReasonCode | None], reason: ReasonCode | None) -> None:
    if fut.done():
        return
    if reason is not None and reason.is_failure:
        fut.set_exception(MessageRefused(f"broker refused the message: {reason}"))
    else:
        fut.set_result(reason)


def _is_packet_too_large(reason: ReasonCode | None) -> bool:
    return reason is not None and reason.value == 0x95


def _is_lost(reason: ReasonCode | None) -> bool:
    """A connection that broke under us: neither our own disconnection (0) nor a keepalive timeout."""
    return reason is not None and reason.value not in (0x00, 0x8D)


def _varint_bytes(n: int) -> int:
    size = 1
    while n >= 128:
        n //= 128
        size += 1
    return size


def _packet_bytes(topic: str, payload_len: int, qos: int, props: Properties | None) -> int:
    """The size of the PUBLISH packet paho will send (what a broker's Maximum Packet Size limits)."""
    remaining = 2 + len(topic.encode()) + (2 if qos else 0) + len(props.pack() if props else b"\x00") + payload_len
    return 1 + _varint_bytes(remaining) + remaining
