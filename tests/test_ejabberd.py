"""The device and the collector against a second MQTT 5 broker: ejabberd's ``mod_mqtt``.

Every test here starts a private ejabberd (sim/ejabberd.py) that logs in every client with a
password and lets a device publish and subscribe only under its own prefix. The fixtures ``broker``,
``device`` and ``collector`` stand in for conftest's Mosquitto ones, so that the pipeline's own chaos
test runs here unchanged.
"""

from __future__ import annotations

import json
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge import keys
from edge.broker_config import DEFAULT_MAX_PACKET_SIZE
from edge.commands.sender import CommandSender
from edge.config import BrokerAddress
from edge.exceptions import DroppedAfterSend, MessageRefused, PacketTooLarge
from edge.sync.link import LinkSettings, MqttLink
from sim.ejabberd import EjabberdBroker, find_ejabberd
from sim.harness import EdgeProcess, collector_rows, run_edge, wait_for
from tests import test_pipeline_chaos as chaos
from tests.conftest import CollectorHandle, Device
from tests.test_collector_login import COLLECTOR_PASSWORD, DEVICE_PASSWORD, password_file

DEVICE = "counter-01"
#: The listener's max_payload_size: the shipped Mosquitto configuration's packet limit.
PAYLOAD_LIMIT = DEFAULT_MAX_PACKET_SIZE


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[EjabberdBroker]:
    """A private ejabberd on free ports, with a login for the device and one for the collector."""
    if find_ejabberd() is None:
        pytest.fail("ejabberd is not installed; run ./scripts/test, which installs it")
    b = EjabberdBroker(
        tmp_path / "ejabberd",
        users={DEVICE: DEVICE_PASSWORD, "collector": COLLECTOR_PASSWORD},
        max_payload_size=PAYLOAD_LIMIT,
    )
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def device(device: Device, tmp_path: Path) -> Device:
    """conftest's device, logging in with its user name and password file."""
    device.env["EDGE_MQTT__USERNAME"] = DEVICE
    device.env["EDGE_MQTT__PASSWORD_FILE"] = str(password_file(tmp_path, "device.password", DEVICE_PASSWORD))
    return device


@pytest.fixture
def collector(tmp_path: Path, broker: EjabberdBroker) -> Iterator[CollectorHandle]:
    """``edge collect`` for commune gia-ray, logging in as "collector"; not yet started."""
    db = tmp_path / "collector.db"
    secret = password_file(tmp_path, "collector.password", COLLECTOR_PASSWORD)
    proc = EdgeProcess(
        [
            *("collect", "--broker", broker.url, "--db", str(db), "--commune", "gia-ray"),
            *("--username", "collector", "--password-file", str(secret), "--summary-interval", "0"),
        ],
        tmp_path / "collector.log",
    )
    handle = CollectorHandle(db, proc)
    try:
        yield handle
    finally:
        proc.stop()


def server_login(broker: EjabberdBroker, client_id: str) -> LinkSettings:
    return LinkSettings(
        BrokerAddress.parse(broker.url),
        client_id,
        clean_start=True,
        session_expiry_s=0,
        username="collector",
        password=COLLECTOR_PASSWORD,
    )


def test_a_rating_goes_up_its_evtack_comes_back_and_a_signed_command_goes_down(
    tmp_path: Path, broker: EjabberdBroker, device: Device, collector: CollectorHandle
) -> None:
    signing_key = keys.generate_signing_key(tmp_path / "signing.key")
    kid = keys.key_id(signing_key)
    device.env["EDGE_COMMANDS__TRUSTED_KEYS"] = json.dumps({kid: keys.public_key_b64(signing_key)})
    collector.start()
    daemon = chaos.start_connected(device)
    sender = CommandSender(server_login(broker, "server-test"), root="vn", commune="gia-ray").start()
    try:
        data = json.dumps({"counter": "q1", "officer": "nv-07", "score": 4, "label": "very_satisfied", "misuse": None})
        ids = run_edge(["emit", "rating", "--count", "3", "--data", data], env=device.env).stdout.split()
        assert wait_for(lambda: {r[0] for r in collector_rows(collector.db, "SELECT id FROM events")} >= set(ids), 60)
        assert wait_for(
            lambda: collector_rows(device.db, "SELECT id FROM events WHERE acked_at IS NULL AND type = 'rating'") == [],
            60,
        ), "the device never got the collector's evtack"

        assert sender.link.wait_connected(30), "the command sender could not log in"
        sent = sender.send(DEVICE, "device.selftest", {}, signing_key)
        final = sender.wait_ack(sent.cmd_id, 30)
        assert final is not None and final["state"] == "succeeded", sender.acks(sent.cmd_id)
    finally:
        sender.stop()
        daemon.stop()
    summary = json.loads(collector.stop().strip().splitlines()[-1])
    assert summary["stored_by_type"]["rating"] == 3
    assert COLLECTOR_PASSWORD not in (tmp_path / "collector.log").read_text()


def test_what_the_broker_refuses_a_device_and_how_the_device_hears_of_it(broker: EjabberdBroker) -> None:
    settings = LinkSettings(
        BrokerAddress.parse(broker.url), DEVICE, clean_start=True, username=DEVICE, password=DEVICE_PASSWORD
    )
    link = MqttLink(settings).start()
    try:
        assert link.wait_connected(30)
        own = link.publish(f"vn/gia-ray/dev/{DEVICE}/evt/test", b"{}").result(10)
        assert own is None or not own.is_failure
        # The ACL, not the device's good manners, keeps it from speaking for another device or for
        # the collector: a PUBACK with an error code (0x90 here; Mosquitto says 0x87).
        for topic in ("vn/gia-ray/dev/counter-02/evt/test", f"vn/gia-ray/dev/{DEVICE}/evtack"):
            with pytest.raises(MessageRefused):
                link.publish(topic, b"{}").result(10)

        # ejabberd announces no Maximum Packet Size in CONNACK; a publish over the listener's
        # max_payload_size is answered by dropping the connection (DISCONNECT 0x95 "Packet too large",
        # lost in the reset when the packet is still being written). The link blames that message, and
        # comes back.
        assert link.max_packet_bytes is None
        connects = link.stats.connects
        with pytest.raises((PacketTooLarge, DroppedAfterSend)):
            link.publish(f"vn/gia-ray/dev/{DEVICE}/evt/test", b"x" * (PAYLOAD_LIMIT + 1)).result(30)
        assert wait_for(lambda: link.connected.is_set() and link.stats.connects > connects, 30)
        after = link.publish(f"vn/gia-ray/dev/{DEVICE}/evt/test", b"{}").result(10)
        assert after is None or not after.is_failure
    finally:
        link.stop()


def test_edge_collect_in_a_share_group_says_the_broker_has_none_and_ends(
    tmp_path: Path, broker: EjabberdBroker
) -> None:
    # ejabberd's CONNACK says "Shared Subscription Available: 0", and it drops a client that sends
    # one anyway (a protocol error). The collector used to do just that, reconnecting for ever and
    # storing nothing; now it does not send it, and ends with the reason.
    secret = password_file(tmp_path, "collector.password", COLLECTOR_PASSWORD)
    result = run_edge(
        [
            *("collect", "--broker", broker.url, "--db", str(tmp_path / "c.db"), "--commune", "gia-ray"),
            *("--username", "collector", "--password-file", str(secret), "--share", "pool"),
            *("--duration", "60", "--summary-interval", "0"),
        ],
        check=False,
    )
    assert result.returncode == 1
    assert "does not support shared subscriptions" in result.stderr
    assert "run one edge collect without --share" in result.stderr
    assert "Shared Subscriptions not supported" not in broker.log_path.read_text()


def pending(device: Device) -> list[str]:
    """Ids the device still holds unacknowledged."""
    return [r[0] for r in collector_rows(device.db, "SELECT id FROM events WHERE acked_at IS NULL")]


@pytest.mark.slow
def test_daemon_killed_ten_times_while_emitting(device: Device, collector: CollectorHandle) -> None:
    # As tests/test_pipeline_chaos.py does on Mosquitto, with its helpers: `edge emit` commits 2000
    # events while the daemon is started, left to connect and send, and killed -9, ten times or more.
    collector.start()
    emitter = chaos.Emitter(device, 2000, interval=0.004)
    rng = random.Random(20261121)
    kills = 0
    while emitter.proc.poll() is None or kills < 10:
        daemon = chaos.start_connected(device)
        time.sleep(rng.uniform(0.2, 1.0))
        # Every other kill lands while the collector is stalled, as on Mosquitto, so repeats surely
        # reach it: what it received meanwhile is stored after the daemon died unacknowledged.
        stall = kills % 2 == 1
        if stall:
            collector.process.proc.send_signal(signal.SIGSTOP)
            time.sleep(0.3)
        daemon.kill()
        if stall:
            collector.process.proc.send_signal(signal.SIGCONT)
        kills += 1
    printed = emitter.wait()
    assert emitter.proc.returncode == 0
    assert len(printed) == 2000

    final = device.daemon().start()
    try:
        assert wait_for(lambda: len(chaos.stored_test_ids(collector)) >= 2000, timeout=60)
        # ...and every evtack found its way back through the broker: the device holds nothing.
        assert wait_for(lambda: pending(device) == [], timeout=60), f"{len(pending(device))} still pending"
    finally:
        final.stop()
    chaos.assert_exactly_once(collector, printed)
