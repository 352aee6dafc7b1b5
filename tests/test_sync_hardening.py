"""The sync path under the failures a careful reading found: poison batches, dying threads, the paho
boundary across reconnects, and bounded memory.

Each test arranges the real parts (Mosquitto, the daemon or its pieces, the collector, SQLite), makes
the failure happen, and checks what a technician or the commune server would see.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.config import BrokerAddress, SyncConfig, load_config
from edge.daemon import Daemon
from edge.exceptions import BadMessage, LinkError
from edge.messages import EvtAck, parse
from edge.server.collector import Collector
from edge.store import NewEvent, Outbox
from edge.store.journal import CommandJournal
from edge.sync import LinkSettings, MqttLink, Uplink
from edge.sync.link import EARLY_MAX
from edge.sync.replies import ReplySender
from edge.sync.undeliverable import undeliverable
from edge.sync.uplink import ACKS_MAX
from edge.topics import Topics
from sim.broker import MosquittoBroker, current_user
from sim.harness import EdgeProcess, collector_rows, daemon_link, run_edge, wait_for, write_device_config
from tests.conftest import FAST_SYNC, Device

BIG = {"blob": "x" * 100_000}


# -- set-up ---------------------------------------------------------------------------------------


def make_device(tmp_path: Path, broker: MosquittoBroker, name: str = "counter-01") -> Device:
    state = tmp_path / f"state-{name}"
    config = write_device_config(tmp_path / f"{name}.toml", broker.url, device=name, state_dir=state)
    return Device(config, state, {"EDGE_CONFIG": str(config), **FAST_SYNC}, tmp_path / f"{name}.log")


def collector_process(tmp_path: Path, broker: MosquittoBroker, *extra: str) -> tuple[Path, EdgeProcess]:
    db = tmp_path / "collector.db"
    args = ["collect", "--broker", broker.url, "--db", str(db), "--commune", "gia-ray", "--summary-interval", "0"]
    return db, EdgeProcess([*args, *extra], tmp_path / "collector.log")


def start_connected(device: Device) -> EdgeProcess:
    daemon = device.daemon().start()
    assert daemon.proc is not None
    assert wait_for(lambda: daemon_link(device.db, daemon.proc.pid) == "up", timeout=30), device.log.read_text()
    return daemon


def stored_ids(db: Path, event_type: str = "test") -> set[str]:
    return {r[0] for r in collector_rows(db, "SELECT id FROM events WHERE type = ?", (event_type,))}


def status(device: Device) -> dict:
    return json.loads(run_edge(["status", "--json"], env=device.env).stdout)


TOPICS = Topics("vn", "gia-ray", "counter-01")


@dataclass
class Stack:
    """The device's sync path in this process: a real outbox, link and uplink."""

    outbox: Outbox
    link: MqttLink
    uplink: Uplink

    def stop(self) -> None:
        self.uplink.stop()
        self.link.stop()
        self.outbox.close()


@pytest.fixture
def stacks() -> Iterator[list[Any]]:
    """Things started by a test, stopped after it (newest first)."""
    made: list[Any] = []
    yield made
    for thing in reversed(made):
        (thing.close if isinstance(thing, Outbox) else thing.stop)()


def sync_stack(
    tmp_path: Path, broker: MosquittoBroker, stacks: list[Any], link_class: type[MqttLink] = MqttLink, **sync: Any
) -> Stack:
    outbox = Outbox(tmp_path / "device" / "events.db", max_event_bytes=4 << 20)
    link = link_class(
        LinkSettings(address=BrokerAddress.parse(broker.url), client_id="counter-01", reconnect_min_s=0.1)
    )
    uplink = Uplink(outbox, link, TOPICS, SyncConfig(**{"ack_timeout_s": 2, "batch_max_bytes": 4 << 20, **sync}))
    stack = Stack(outbox, link, uplink)
    stacks.append(stack)
    uplink.start()
    link.start()
    assert link.wait_connected(30)
    return stack


def start_collector(tmp_path: Path, broker: MosquittoBroker, stacks: list[Any], **kw: Any) -> Collector:
    collector = Collector(broker.url, tmp_path / "collector.db", commune="gia-ray", **kw)
    stacks.append(collector)
    collector.start()
    assert collector.link.wait_connected(30)
    return collector


class Probe:
    """A bare MQTT 5 client (paho, its own thread) standing in for a device or a server."""

    def __init__(self, broker: MosquittoBroker, client_id: str) -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.messages: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload)))

    def subscribe(self, topic: str) -> None:
        done = threading.Event()
        self.client.on_subscribe = lambda *_: done.set()
        self.client.subscribe(topic, qos=1)
        assert done.wait(30)

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(30)

    def received(self, topic: str) -> list[bytes]:
        with self._lock:
            return [p for t, p in self.messages if t == topic]

    def acks(self) -> list[dict[str, Any]]:
        return [json.loads(p) for p in self.received(TOPICS.evtack)]

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class UnannouncedLimitLink(MqttLink):
    """The link as it is when the broker enforces a packet limit without announcing it in CONNACK
    (a proxy in between, or a broker that only says so by dropping the connection)."""

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        super()._on_connect(client, userdata, flags, reason, Properties(PacketTypes.CONNACK))


@pytest.fixture
def packet_limited_broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A broker that disconnects any client sending a packet over 64 KiB (and says so in CONNACK)."""
    b = MosquittoBroker(tmp_path / "broker", max_packet_size=65536).start()
    try:
        yield b
    finally:
        b.stop()


# -- 1. poison batches ----------------------------------------------------------------------------


def test_an_oversized_event_already_stored_is_set_aside_and_the_twenty_after_it_arrive(
    tmp_path: Path, packet_limited_broker: MosquittoBroker
) -> None:
    device = make_device(tmp_path, packet_limited_broker)
    db, collector = collector_process(tmp_path, packet_limited_broker)
    collector.start()
    daemon = start_connected(device)
    try:
        # Written as an older release (without the size cap at append) would have: the event is on
        # disk, and no broker of this commune will ever take it.
        with Outbox(device.db, max_event_bytes=1 << 20) as outbox:
            big = outbox.append("test", BIG)
        small = run_edge(["emit", "test", "--count", "20"], env=device.env).stdout.split()
        assert len(small) == 20
        assert wait_for(lambda: stored_ids(db) >= set(small), timeout=60), (
            f"{len(stored_ids(db) & set(small))} of 20 arrived"
        )
        # Stored at the collector, then acknowledged: the device hears the evtacks a moment later.
        assert wait_for(lambda: status(device)["queue"]["depth"] == 0, timeout=30), status(device)
        report = status(device)
        aside = {u["id"]: u for u in report["undeliverable"]}
        assert big.id in aside, report
        assert aside[big.id]["seq"] == big.seq
        assert "too large" in aside[big.id]["reason"]
    finally:
        daemon.stop()
        collector.stop()
    assert big.id not in stored_ids(db)


def test_the_held_out_case_a_100_kb_emit_is_refused_at_once_and_the_twenty_after_it_arrive(
    tmp_path: Path, packet_limited_broker: MosquittoBroker
) -> None:
    device = make_device(tmp_path, packet_limited_broker)
    db, collector = collector_process(tmp_path, packet_limited_broker)
    collector.start()
    daemon = start_connected(device)
    try:
        big = run_edge(["emit", "test", "--data", json.dumps(BIG)], env=device.env, check=False)
        assert big.returncode != 0
        assert big.stdout == ""  # no id printed: nothing was committed
        assert "the limit is" in big.stderr
        small = run_edge(["emit", "test", "--count", "20"], env=device.env).stdout.split()
        assert wait_for(lambda: stored_ids(db) >= set(small), timeout=60), (
            f"{len(stored_ids(db) & set(small))} of 20 arrived"
        )
        # Stored at the collector, then acknowledged: the device hears the evtacks a moment later.
        assert wait_for(lambda: status(device)["queue"]["depth"] == 0, timeout=30), status(device)
    finally:
        daemon.stop()
        collector.stop()


@pytest.mark.parametrize("size", [100_000, 1_500_000])
def test_a_broker_that_drops_the_connection_over_a_packet_gets_the_rest_and_the_event_is_set_aside(
    tmp_path: Path, packet_limited_broker: MosquittoBroker, stacks: list[Any], size: int
) -> None:
    collector = start_collector(tmp_path, packet_limited_broker, stacks)
    # Wait until the collector's subscription is in place before the device sends anything.
    assert wait_for(lambda: collector.link.connected.is_set(), timeout=30)
    stack = sync_stack(tmp_path, packet_limited_broker, stacks, UnannouncedLimitLink)
    assert stack.link.max_packet_bytes is None
    # Committed together, so they go out in one batch the broker will not take.
    # A large packet is still being written when the broker closes the socket: then the broker's
    # DISCONNECT (0x95) is lost in the reset, and only the repetition tells.
    blob = {"blob": "x" * size}
    big, *small = stack.outbox.append_many([NewEvent("test", blob), *(NewEvent("test", {"n": i}) for i in range(20))])
    assert wait_for(lambda: stored_ids(tmp_path / "collector.db") >= {c.id for c in small}, timeout=60)
    assert wait_for(lambda: [u["id"] for u in undeliverable(stack.outbox)] == [big.id], timeout=30)
    aside = undeliverable(stack.outbox)[0]
    assert aside["source"] == "broker"
    assert "too large" in aside["reason"]
    # The broker dropped us over the batch of 21, then over the big event alone; we came back.
    assert stack.link.stats.disconnects >= 2
    assert stack.uplink.stats.split_batches >= 1
    assert wait_for(lambda: stack.outbox.stats().depth == 0, timeout=30)
    assert big.id not in stored_ids(tmp_path / "collector.db")


def test_a_publish_over_message_size_limit_costs_a_few_reconnects_then_the_event_is_set_aside(
    tmp_path: Path, stacks: list[Any]
) -> None:
    # Mosquitto 2.0 answers a publish over message_size_limit with PUBACK 0x95, a code MQTT 5 allows
    # only in DISCONNECT: paho takes that PUBACK for a protocol error and drops the connection itself,
    # every time, right after the same batch. The limit is not announced either.
    broker = MosquittoBroker(tmp_path / "broker", message_size_limit=65536).start()
    stacks.append(broker)
    start_collector(tmp_path, broker, stacks)
    stack = sync_stack(tmp_path, broker, stacks)
    assert stack.link.max_packet_bytes is None
    big, *small = stack.outbox.append_many([NewEvent("test", BIG), *(NewEvent("test", {"n": i}) for i in range(20))])
    assert wait_for(lambda: stored_ids(tmp_path / "collector.db") >= {c.id for c in small}, timeout=90)
    assert wait_for(lambda: [u["id"] for u in undeliverable(stack.outbox)] == [big.id], timeout=30)
    assert "dropped right after" in undeliverable(stack.outbox)[0]["reason"]
    assert stack.uplink.stats.split_batches >= 1
    assert wait_for(lambda: stack.outbox.stats().depth == 0, timeout=30)


def test_an_evtack_may_reject_ranges_and_old_evtacks_still_mean_what_they_meant() -> None:
    old = parse(EvtAck, b'{"v":1,"epoch":"00112233aabbccdd","ranges":[[1,5]]}', 65536)
    assert old.ranges == [(1, 5)] and old.rejected == [] and old.reason is None
    new = parse(
        EvtAck,
        b'{"v":1,"epoch":"00112233aabbccdd","ranges":[],"rejected":[[7,7]],"reason":"schema","detail":"events.0.ts"}',
        65536,
    )
    assert new.ranges == [] and new.rejected == [(7, 7)] and new.reason == "schema"
    for bad in (
        b'{"v":1,"epoch":"00112233aabbccdd","ranges":[]}',  # says nothing
        b'{"v":1,"epoch":"00112233aabbccdd","ranges":[],"rejected":[[7,7]]}',  # no reason
        b'{"v":1,"epoch":"00112233aabbccdd","ranges":[],"rejected":[[9,7]],"reason":"schema"}',  # inverted
        b'{"v":1,"epoch":"00112233aabbccdd","ranges":[],"rejected":[[7,7]],"reason":"Not A Word!"}',
    ):
        with pytest.raises(BadMessage):
            parse(EvtAck, bad, 65536)


def good_event(seq: int, **changes: Any) -> dict[str, Any]:
    return {
        "id": f"01a1fee9-1a60-7526-a8fd-{seq:012d}",
        "seq": seq,
        "type": "test",
        "priority": "normal",
        "ts": "2026-11-21T08:15:30.123+07:00",
        "clock_synced": True,
        "data": {"n": seq},
        **changes,
    }


def test_the_collector_answers_what_it_rejects_and_stores_the_rest(
    tmp_path: Path, broker: MosquittoBroker, stacks: list[Any]
) -> None:
    collector = start_collector(tmp_path, broker, stacks)
    device = Probe(broker, "counter-01")
    stacks.append(device)
    device.subscribe(TOPICS.evtack)
    epoch = "00112233aabbccdd"
    batch = {"v": 1, "device": "counter-01", "commune": "gia-ray", "epoch": epoch}
    mixed = [good_event(1), good_event(2, ts="x" * 41), good_event(3), good_event(4, data=[1, 2])]
    device.publish(TOPICS.evt("test"), json.dumps({**batch, "events": mixed}).encode())
    # Not answerable: no epoch, another contract version, not JSON. Then a good batch, whose answer
    # shows that everything before it was handled.
    device.publish(TOPICS.evt("test"), json.dumps({"v": 1, "device": "counter-01", "events": mixed}).encode())
    device.publish(TOPICS.evt("test"), json.dumps({**batch, "v": 2, "events": mixed}).encode())
    device.publish(TOPICS.evt("test"), b"{not json")
    device.publish(TOPICS.evt("test"), json.dumps({**batch, "events": [good_event(5)]}).encode())
    assert wait_for(lambda: any(a["ranges"] == [[5, 5]] for a in device.acks()), timeout=30), device.acks()
    acks = device.acks()
    assert acks == [
        {
            "v": 1,
            "epoch": epoch,
            "ranges": [[1, 1], [3, 3]],
            "rejected": [[2, 2], [4, 4]],
            "reason": "schema",
            "detail": acks[0]["detail"],
        },
        {"v": 1, "epoch": epoch, "ranges": [[5, 5]]},
    ]
    assert acks[0]["detail"].startswith("events.1.ts")
    assert sorted(r[0] for r in collector_rows(tmp_path / "collector.db", "SELECT seq FROM events")) == [1, 3, 5]
    assert collector.summary()["rejected_events"] == 2


def test_an_event_the_collector_rejects_is_set_aside_with_its_reason_and_not_sent_again(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    device = make_device(tmp_path, broker)
    with Outbox(device.db) as outbox:
        first, broken, third = (outbox.append("test", {"n": i}) for i in range(3))
    # As an older release with a bug might have left it: data that is not a JSON object.
    conn = sqlite3.connect(device.db)
    with conn:
        conn.execute("UPDATE events SET data = '[1,2]' WHERE seq = ?", (broken.seq,))
    conn.close()
    db, collector = collector_process(tmp_path, broker)
    collector.start()
    daemon = start_connected(device)
    try:
        assert wait_for(lambda: stored_ids(db) == {first.id, third.id}, timeout=60)
        assert wait_for(lambda: status(device)["queue"]["depth"] == 0, timeout=30), status(device)
        report = status(device)
        [aside] = report["undeliverable"]
        assert aside["id"] == broken.id and aside["seq"] == broken.seq
        assert aside["source"] == "collector"
        assert aside["reason"].startswith("schema: events.")
        assert report["counters"]["undeliverable_collector"] == 1
    finally:
        daemon.stop()
        summary = json.loads(collector.stop().strip().splitlines()[-1])
    # Rejected once, never sent again (each resend would have been rejected again).
    assert summary["rejected_events"] == 1
    assert broken.id not in stored_ids(db)


# -- 2. dying threads -----------------------------------------------------------------------------


def test_edge_run_ends_with_a_clear_line_when_the_uplink_thread_dies(tmp_path: Path, broker: MosquittoBroker) -> None:
    device = make_device(tmp_path, broker)
    daemon = start_connected(device)
    assert daemon.proc is not None
    # A real store failure under the running daemon: its events table is gone (a botched migration by
    # hand, say). The uplink's next read fails, and a daemon that cannot send must not look healthy.
    conn = sqlite3.connect(device.db)
    with conn:
        conn.execute("ALTER TABLE events RENAME TO events_gone")
    conn.close()
    try:
        assert daemon.proc.wait(timeout=60) == 1
    finally:
        daemon.stop()
    log = device.log.read_text()
    assert "uplink thread died: StoreError" in log, log[-3000:]
    assert "no such table: events" in log


def test_edge_collect_ends_with_a_clear_line_when_its_store_keeps_failing(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    device = make_device(tmp_path, broker)
    db, collector = collector_process(tmp_path, broker, "--store-retry-s", "3")
    collector.start()
    daemon = start_connected(device)
    try:
        first = run_edge(["emit", "test"], env=device.env).stdout.split()
        assert wait_for(lambda: stored_ids(db) == set(first), timeout=60)
        conn = sqlite3.connect(db)
        with conn:
            conn.execute("ALTER TABLE events RENAME TO events_gone")
        conn.close()
        run_edge(["emit", "test"], env=device.env)  # sent, and sent again: it cannot be stored
        assert collector.proc is not None
        assert collector.proc.wait(timeout=60) == 1
    finally:
        daemon.stop()
        collector.stop()
    log = (tmp_path / "collector.log").read_text()
    assert "collector thread died: StoreError" in log, log[-3000:]
    assert "has failed for" in log


@pytest.mark.parametrize("part", ["mqtt-link", "replies", "commands"])
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the injected death
def test_a_daemon_that_loses_a_loop_names_it_and_stops(tmp_path: Path, broker: MosquittoBroker, part: str) -> None:
    config_path = write_device_config(tmp_path / "edge.toml", broker.url, state_dir=tmp_path / "state")
    daemon = Daemon(load_config(config_path, environ=FAST_SYNC))

    def die(*_: object) -> Any:
        raise SystemExit(f"{part} injected")

    if part == "mqtt-link":
        daemon.link.on_connect(die)  # raised on the network thread, inside paho's CONNACK handling
    daemon.start()
    try:
        assert daemon.link.wait_connected(30) or part == "mqtt-link"
        if part == "replies":
            setattr(daemon.journal, "pending_replies", die)  # noqa: B010 - the injected failure
            daemon.replies.wake()
        elif part == "commands":
            setattr(daemon.channel, "_handle", die)  # noqa: B010 - the injected failure
            sender = Probe(broker, "server")

            # Until the daemon's subscription is surely in place: any message kills the intake.
            def poke() -> bool:
                sender.publish(TOPICS.cmd("device.selftest"), b"anything")
                return daemon.supervisor.failed.is_set()

            wait_for(poke, timeout=30, interval=0.5)
            sender.stop()
        assert daemon.wait(threading.Event(), timeout=30) == "failed"
        assert daemon.supervisor.reason == f"{part} thread died: SystemExit: {part} injected"
    finally:
        daemon.stop_after_failure()


# -- 3. the paho boundary across reconnects -------------------------------------------------------


def broker_log_since_start(broker: MosquittoBroker) -> str:
    text = (broker.workdir / "mosquitto.log").read_text(errors="replace")
    return text.rsplit("mosquitto version", 1)[-1]


@pytest.fixture
def verbose_broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A broker that logs every packet it receives."""
    b = MosquittoBroker(tmp_path / "verbose-broker", extra_config="log_type all").start()
    try:
        yield b
    finally:
        b.stop()


def start_link(broker: MosquittoBroker, stacks: list[Any], client_id: str = "counter-01", **kw: Any) -> MqttLink:
    link = MqttLink(LinkSettings(address=BrokerAddress.parse(broker.url), client_id=client_id, **kw))
    stacks.append(link)
    link.start()
    return link


def test_after_a_reconnect_paho_sends_no_copy_of_its_own_and_no_old_acknowledgement_resolves_a_new_publish(
    verbose_broker: MosquittoBroker, stacks: list[Any]
) -> None:
    broker = verbose_broker
    link = start_link(broker, stacks, reconnect_min_s=0.1, reconnect_max_s=0.5)
    assert link.wait_connected(30)
    topic = TOPICS.evt("probe")
    # The broker hangs with the message unacknowledged, then dies and comes back empty.
    broker.pause()
    lost = link.publish(topic + "-lost", b"lost")
    lost_mid = link._client._last_mid
    broker.kill()
    broker.start()
    assert wait_for(lost.done, timeout=30)
    assert isinstance(lost.exception(), LinkError)  # its owner (the outbox, the journal) sends it again
    assert wait_for(lambda: link.generation >= 2 and link.connected.is_set(), timeout=30)
    link.publish(topic, b"marker").result(30)
    assert topic + "-lost" not in broker_log_since_start(broker), "paho sent its own copy after the reconnect"
    # The next publish that gets the old message id (paho's counter wraps at 65535) must wait for
    # its own acknowledgement, not take one left over from the old message.
    link._client._last_mid = lost_mid - 1
    broker.pause()
    try:
        fut = link.publish(topic, b"reused id")
        assert link._client._last_mid == lost_mid
        assert not fut.done(), "resolved by an acknowledgement the broker never sent for it"
    finally:
        broker.resume()
    fut.result(30)  # and then its own acknowledgement does resolve it


def reply_stack(db: Path, broker: MosquittoBroker, stacks: list[Any]) -> tuple[Outbox, CommandJournal, ReplySender]:
    """A store with its command journal, a link to ``broker`` and a started reply sender, as the daemon
    builds them."""
    outbox = Outbox(db)
    stacks.append(outbox)
    journal = CommandJournal(outbox)
    link = start_link(broker, stacks)
    sender = ReplySender(journal, link, TOPICS)
    stacks.append(sender)
    sender.start()
    return outbox, journal, sender


def test_reply_outcomes_are_recorded_on_the_senders_thread_not_the_network_thread(
    tmp_path: Path, broker: MosquittoBroker, stacks: list[Any]
) -> None:
    _, journal, sender = reply_stack(tmp_path / "events.db", broker, stacks)
    recorded_on: list[str] = []
    reply_sent = journal.reply_sent

    def spy(reply_id: int) -> None:
        recorded_on.append(threading.current_thread().name)
        reply_sent(reply_id)

    journal.reply_sent = spy  # type: ignore[method-assign]
    journal.reply("ack", b'{"v":1}')
    sender.wake()
    assert wait_for(lambda: recorded_on and not journal.pending_replies(), timeout=30)
    assert recorded_on == ["replies"]


def test_the_daemon_records_its_link_state_off_the_network_thread(tmp_path: Path, broker: MosquittoBroker) -> None:
    config_path = write_device_config(tmp_path / "edge.toml", broker.url, state_dir=tmp_path / "state")
    daemon = Daemon(load_config(config_path, environ=FAST_SYNC))
    written_on: list[str] = []
    set_meta = daemon.outbox.set_meta

    def spy(key: str, value: str, **kw: Any) -> None:
        if key == "link":
            written_on.append(threading.current_thread().name)
        set_meta(key, value, **kw)

    daemon.outbox.set_meta = spy  # type: ignore[method-assign]
    daemon.start()
    try:
        assert wait_for(lambda: (daemon.outbox.get_meta("link") or "").startswith("up"), timeout=30)
    finally:
        daemon.stop()
    assert "mqtt-link" not in written_on


def test_two_devices_with_one_client_id_back_off_instead_of_taking_each_other_over(
    broker: MosquittoBroker, stacks: list[Any]
) -> None:
    # Two Pis from one SD card image: the same client id. Each connection drops the other's.
    twins = [start_link(broker, stacks, client_id="cloned-01") for _ in range(2)]
    assert wait_for(lambda: all(t.stats.connects >= 1 for t in twins), timeout=30)
    # Observed over a fixed span: how often they knock is the point. A reconnect after each
    # takeover (0.5 s at first) would make dozens of connections; a backoff that only starts over
    # after a connection stayed up 30 s doubles each time, and allows a few.
    time.sleep(12)
    connects = sum(t.stats.connects for t in twins)
    assert connects <= 16, f"{connects} connections in 12 s"


# -- refusals that are not the events' fault -----------------------------------------------------


@pytest.fixture
def acl_broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A broker whose ACL lets counter-01 write its panel events but not its test events or acks (and
    the collector its evtacks and presence)."""
    acl = tmp_path / "acl"
    allowed = [TOPICS.evt("panel"), TOPICS.evtack, TOPICS.server_status]
    acl.write_text("topic read #\n" + "".join(f"topic write {t}\n" for t in allowed))
    # Started as root, mosquitto would read the ACL as its own user, who cannot enter the test's directory.
    extra = f"acl_file {acl}\nuser {current_user()}"
    b = MosquittoBroker(tmp_path / "acl-broker", extra_config=extra).start()
    try:
        yield b
    finally:
        b.stop()


def test_a_batch_the_acl_refuses_stays_pending_and_other_types_still_flow(
    tmp_path: Path, acl_broker: MosquittoBroker, stacks: list[Any]
) -> None:
    collector = start_collector(tmp_path, acl_broker, stacks)
    stack = sync_stack(tmp_path, acl_broker, stacks, max_inflight=2)
    refused = [stack.outbox.append("test", {"n": i}) for i in range(5)]
    allowed = [stack.outbox.append("panel", {"n": i}) for i in range(5)]
    assert wait_for(lambda: stored_ids(tmp_path / "collector.db", "panel") == {c.id for c in allowed}, timeout=60)
    assert wait_for(lambda: stack.uplink.stats.refused >= 1, timeout=30)
    # A configuration problem on the broker, not a bad event: nothing is set aside, all stays pending.
    assert undeliverable(stack.outbox) == []
    assert {e.seq for e in stack.outbox.pending()} == {c.seq for c in refused}
    assert collector.summary()["stored"] == 5


def test_a_graceful_stop_waits_for_the_broker_to_acknowledge_the_last_replies(
    broker: MosquittoBroker, stacks: list[Any]
) -> None:
    """SIGTERM right after a command's outcome: the ``succeeded`` ack is on its way, the broker slow to
    answer. The stop gives it the moment it needs, so the server does not get the ack again after the
    restart; a broker that never answers only delays the stop by the drain's bound."""
    _, journal, sender = reply_stack(broker.workdir.parent / "events.db", broker, stacks)
    link = sender.link
    assert link.wait_connected(30)

    broker.pause()  # the PUBACK cannot come while it hangs
    journal.reply("ack", json.dumps({"state": "succeeded"}).encode())
    sender.wake()
    assert wait_for(lambda: bool(sender._inflight), timeout=10)  # published, not yet acknowledged
    threading.Timer(0.3, broker.resume).start()
    sender.stop(drain_s=10)
    assert journal.pending_replies() == [], "the stop did not wait for the broker's acknowledgement"
    assert sender.sent == 1

    # A broker that hangs for good: the stop ends after the drain's bound, and the reply is kept.
    second = ReplySender(journal, link, TOPICS)
    stacks.append(second)
    second.start()
    broker.pause()
    journal.reply("ack", json.dumps({"state": "failed"}).encode())
    second.wake()
    try:
        second.stop(drain_s=0.5)
        assert [json.loads(r.payload)["state"] for r in journal.pending_replies()] == ["failed"]
    finally:
        broker.resume()


def test_a_reply_the_broker_keeps_refusing_is_dropped_and_forgotten(
    tmp_path: Path, acl_broker: MosquittoBroker, stacks: list[Any]
) -> None:
    outbox, journal, sender = reply_stack(tmp_path / "events.db", acl_broker, stacks)
    for i in range(5):
        journal.reply("ack", json.dumps({"n": i}).encode())
    sender.wake()
    assert wait_for(lambda: outbox.counters().get("replies_refused") == 5, timeout=60), outbox.counters()
    assert journal.pending_replies() == []
    # Nothing is kept about replies that are gone.
    assert sender._refusals == {}


# -- 4. bounds ------------------------------------------------------------------------------------


def test_the_collector_drops_the_oldest_waiting_message_past_its_bound_and_the_device_sends_it_again(
    tmp_path: Path, broker: MosquittoBroker, stacks: list[Any]
) -> None:
    collector = start_collector(tmp_path, broker, stacks, max_queued_bytes=4000)
    device = make_device(tmp_path, broker)
    # One event per message, a wide window: many small messages at once.
    device.env.update({"EDGE_SYNC__BATCH_MAX_EVENTS": "1", "EDGE_SYNC__MAX_INFLIGHT": "50"})
    daemon = start_connected(device)
    try:
        # The collector's database is busy (an analyst's long write, say): nothing can be stored.
        blocker = sqlite3.connect(tmp_path / "collector.db", timeout=30)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            printed = run_edge(["emit", "test", "--count", "60"], env=device.env).stdout.split()
            assert wait_for(lambda: collector.stats.dropped_overload > 0, timeout=10)
            with collector._lock:
                assert collector._queued_bytes <= 4000
        finally:
            blocker.rollback()
            blocker.close()
        # Nothing dropped was acknowledged: the device sends it again, and everything arrives once.
        assert wait_for(lambda: stored_ids(tmp_path / "collector.db") == set(printed), timeout=120)
    finally:
        daemon.stop()
    assert collector_rows(tmp_path / "collector.db", "SELECT COUNT(*) FROM events WHERE type = 'test'")[0][0] == 60


def test_evtacks_waiting_for_a_stalled_store_are_bounded(
    tmp_path: Path, broker: MosquittoBroker, stacks: list[Any]
) -> None:
    stack = sync_stack(tmp_path, broker, stacks)
    pending = stack.outbox.append("test", {})
    server = Probe(broker, "flood")
    stacks.append(server)
    ack = json.dumps({"v": 1, "epoch": stack.outbox.epoch, "ranges": [[pending.seq, pending.seq]]}).encode()
    # The SD card stalls: the outbox cannot commit, so the uplink waits on its first evtack.
    blocker = sqlite3.connect(stack.outbox.path, timeout=30)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        for _ in range(3000):
            server.client.publish(TOPICS.evtack, ack, qos=0)
        assert wait_for(lambda: stack.uplink.stats.acks_dropped >= 1000, timeout=30), stack.uplink.stats
        assert len(stack.uplink._acks) <= ACKS_MAX
    finally:
        blocker.rollback()
        blocker.close()
    assert wait_for(lambda: stack.outbox.stats().depth == 0, timeout=30)


def test_acknowledgements_nobody_waits_for_are_bounded(broker: MosquittoBroker, stacks: list[Any]) -> None:
    link = start_link(broker, stacks)
    assert link.wait_connected(30)
    # QoS 0 messages are "acknowledged" by paho once written, with nobody waiting: the same path a
    # stray acknowledgement would take.
    for i in range(2000):
        link.publish(TOPICS.evt("probe"), str(i).encode(), qos=0)
    assert wait_for(lambda: link.stats.stale_pubacks >= 2000 - EARLY_MAX, timeout=30)
    assert len(link._early) <= EARLY_MAX


def test_the_link_sends_small_packets_at_once(broker: MosquittoBroker) -> None:
    """TCP_NODELAY on the link's socket: a PUBACK or an evtack must not wait out the peer's delayed
    ACK behind Nagle's algorithm (about 20 ms a round trip); the broker is configured the same way."""
    import socket

    link = MqttLink(LinkSettings(address=BrokerAddress.parse(broker.url), client_id="nodelay-1")).start()
    try:
        assert link.wait_connected(30)
        sock = link._client.socket()
        assert sock is not None
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        assert "set_tcp_nodelay true" in (broker.workdir / "mosquitto.conf").read_text()
    finally:
        link.stop()
