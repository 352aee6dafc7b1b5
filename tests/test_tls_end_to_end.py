"""``edge run``, ``edge collect`` and ``edge command send`` over TLS with client certificates, through the
shipped Mosquitto template and ACL (issue: signed commands, transport security).

The broker, collector and server certificates come from the commune CA (``edge.pki``, what
``scripts/make-ca`` runs); the device's key and certificate request are made by ``edge keys device``
and signed by the CA, as a technician would do it.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from edge import keys, pki
from edge.config import BrokerAddress
from edge.exceptions import LinkError
from edge.sync.link import LinkSettings, MqttLink
from sim.broker import MosquittoBroker, find_mosquitto
from sim.harness import EdgeProcess, collector_rows, run_edge, wait_for, write_device_config
from tests.conftest import FAST_SYNC
from tests.tls_fixtures import enrol_device, shipped_tls_broker

COMMUNE = "gia-ray"
TIMEOUT = 20.0


@dataclass
class Site:
    """A commune: its CA, broker (shipped template), server identity and one enrolled device."""

    workdir: Path
    ca: pki.CommuneCA
    broker: MosquittoBroker
    server: pki.Issued
    intruder: pki.Issued  # counter-02: a genuine device of this commune, misbehaving
    device_env: dict[str, str]
    signing_key: Path

    def tls_args(self) -> list[str]:
        assert self.server.key_path is not None
        return ["--ca", str(self.ca.cert_path), "--cert", str(self.server.cert_path)]


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    if find_mosquitto() is None:
        pytest.fail("mosquitto is not installed; run ./scripts/test, which installs it")
    ca = pki.init_ca(tmp_path / "ca", commune=COMMUNE)
    broker = shipped_tls_broker(tmp_path, ca, commune=COMMUNE)
    # Enrol the device the way a technician does: key and request on the device, certificate from the CA.
    cert, key = enrol_device(ca, tmp_path / "device", device="counter-01", commune=COMMUNE)
    signing = tmp_path / "server-signing.key"
    made = json.loads(run_edge(["keys", "signing", "create", str(signing), "--json"]).stdout)

    config = write_device_config(tmp_path / "edge.toml", broker.url, state_dir=tmp_path / "state")
    env = {
        "EDGE_CONFIG": str(config),
        **FAST_SYNC,
        "EDGE_MQTT__TLS__CA_FILE": str(ca.cert_path),
        "EDGE_MQTT__TLS__CERT_FILE": str(cert),
        "EDGE_MQTT__TLS__KEY_FILE": str(key),
        "EDGE_COMMANDS__TRUSTED_KEYS": json.dumps({made["kid"]: made["public_key"]}),
    }
    try:
        yield Site(
            tmp_path, ca, broker, pki.issue_server(ca, "collector"), pki.issue_device(ca, "counter-02"), env, signing
        )
    finally:
        broker.stop()


def _collector(site: Site) -> EdgeProcess:
    assert site.server.key_path is not None
    return EdgeProcess(
        [
            "collect",
            "--broker",
            site.broker.url,
            "--db",
            str(site.workdir / "collector.db"),
            "--commune",
            COMMUNE,
            "--summary-interval",
            "0",
            *site.tls_args(),
            "--key",
            str(site.server.key_path),
        ],
        site.workdir / "collector.log",
    )


def test_events_and_commands_flow_over_tls_with_client_certificates(site: Site) -> None:
    assert site.server.key_path is not None
    emitted = run_edge(["emit", "test", "--data", '{"over": "tls"}', "--count", "20"], env=site.device_env)
    ids = emitted.stdout.split()
    collector = _collector(site).start()
    daemon = EdgeProcess(["run"], site.workdir / "daemon.log", site.device_env).start()
    try:
        db = site.workdir / "collector.db"
        query = "SELECT id FROM events WHERE type = 'test'"
        assert wait_for(lambda: len(collector_rows(db, query)) == 20, TIMEOUT), (
            site.workdir / "daemon.log"
        ).read_text()
        assert sorted(r[0] for r in collector_rows(db, query)) == sorted(ids)

        sent = run_edge(
            [
                "command",
                "send",
                "counter-01",
                "device.selftest",
                "--key",
                str(site.signing_key),
                "--broker",
                site.broker.url,
                "--commune",
                COMMUNE,
                *site.tls_args(),
                "--tls-key",
                str(site.server.key_path),
                "--json",
            ],
            check=False,
        )
        assert sent.returncode == 0, sent.stderr
        answer = json.loads(sent.stdout)
        assert [a["state"] for a in answer["acks"]] == ["accepted", "succeeded"]
        assert answer["final"]["result"]["link"]["broker"] == site.broker.url
    finally:
        daemon.stop()
        collector.stop()


def _collector_online(link: MqttLink) -> threading.Event:
    """Set once the collector says it is online (it does so after its subscriptions are made)."""
    online = threading.Event()

    def on_status(_topic: str, payload: bytes) -> None:
        if json.loads(payload).get("online"):
            online.set()

    link.subscribe(f"vn/{COMMUNE}/server/status", on_status)
    return online


def _client(site: Site, issued: pki.Issued, client_id: str) -> MqttLink:
    settings = LinkSettings(
        BrokerAddress.parse(site.broker.url),
        client_id,
        clean_start=True,
        session_expiry_s=0,
        ca_file=site.ca.cert_path,
        cert_file=issued.cert_path,
        key_file=issued.key_path,
    )
    link = MqttLink(settings).start()
    assert link.wait_connected(TIMEOUT)
    return link


def _batch(device: str, event_id: str) -> str:
    event = {
        "id": event_id,
        "seq": 1,
        "type": "rating",
        "priority": "critical",
        "ts": "2026-11-21T08:15:30.123+07:00",
        "clock_synced": True,
        "data": {"score": 1},
    }
    return json.dumps({"v": 1, "device": device, "commune": COMMUNE, "epoch": "abcdef0123456789", "events": [event]})


def test_a_device_cannot_write_under_another_devices_prefix_and_nothing_is_stored(site: Site) -> None:
    collector = _collector(site).start()
    intruder = _client(site, site.intruder, "counter-02")
    assert _collector_online(intruder).wait(TIMEOUT)
    try:
        forged = str(uuid.uuid4())
        with pytest.raises(LinkError, match="refused"):
            intruder.publish(f"vn/{COMMUNE}/dev/counter-01/evt/rating", _batch("counter-01", forged)).result(TIMEOUT)

        # A marker the intruder may send (under its own prefix) proves the collector was listening.
        marker = str(uuid.uuid4())
        intruder.publish(f"vn/{COMMUNE}/dev/counter-02/evt/rating", _batch("counter-02", marker)).result(TIMEOUT)
        db = site.workdir / "collector.db"
        assert wait_for(lambda: [r[0] for r in collector_rows(db)] == [marker], TIMEOUT), collector_rows(db)
    finally:
        intruder.stop()
        collector.stop()


def test_a_device_cannot_command_another_device(site: Site) -> None:
    """Even with a valid signed token in hand, a device certificate may not publish on cmd/#."""
    intruder = _client(site, site.intruder, "counter-02")
    try:
        with pytest.raises(LinkError, match="refused"):
            intruder.publish(f"vn/{COMMUNE}/dev/counter-01/cmd/device.selftest", b"token").result(TIMEOUT)
    finally:
        intruder.stop()


def test_keys_trusted_lists_what_the_device_trusts(site: Site) -> None:
    shown = json.loads(run_edge(["keys", "trusted", "--json"], env=site.device_env).stdout)
    made = json.loads(run_edge(["keys", "signing", "show", str(site.signing_key), "--json"]).stdout)
    assert [k["kid"] for k in shown["keys"]] == [made["kid"]]
    assert shown["keys"][0]["public_key"] == made["public_key"]
    assert keys.key_id(keys.load_signing_key(site.signing_key)) == made["kid"]
