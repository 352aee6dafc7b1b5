"""Transport security with a real Mosquitto, certificates from the commune CA and the shipped ACL.

Every test runs against two brokers: the shipped ``mosquitto.conf`` template rendered for a private
port, and the test broker of ``sim/broker.py`` given the rendered ACL (what the daemon's own tests
use). Clients are real paho-mqtt 2.x clients speaking MQTT 5 over TLS with client certificates.

Where a test must show that something did *not* arrive, it never sleeps and hopes: it sends a marker
the receiver is allowed to get, after the forbidden message, and checks once the marker is in.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from edge import broker_config, keys, pki
from sim.broker import MosquittoBroker, find_mosquitto
from tests.tls_fixtures import shipped_tls_broker

COMMUNE = "gia-ray"
PREFIX = f"vn/{COMMUNE}"
TIMEOUT = 10.0

NOT_AUTHORIZED = 0x87


def accepted(rc: ReasonCode) -> bool:
    """A PUBACK that took the message (0 success, or 0x10 "no matching subscribers")."""
    return not rc.is_failure


def key_of(issued: pki.Issued) -> Path:
    assert issued.key_path is not None
    return issued.key_path


@dataclass
class Pki:
    ca: pki.CommuneCA
    broker: pki.Issued
    server: pki.Issued
    devices: dict[str, pki.Issued]
    foreign_device: pki.Issued  # same CN as a real device, from another CA


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ca = pki.init_ca(root / "ca", commune=COMMUNE)
    other = pki.init_ca(root / "other-ca", commune=COMMUNE)
    return Pki(
        ca=ca,
        broker=pki.issue_broker(ca, "localhost", ips=["127.0.0.1"]),
        server=pki.issue_server(ca, "collector"),
        devices={d: pki.issue_device(ca, d) for d in ("counter-01", "counter-02", "loa-03", "loa-04")},
        foreign_device=pki.issue_device(other, "counter-01"),
    )


@pytest.fixture(scope="module", params=["shipped-template", "test-broker"])
def tls_broker(
    request: pytest.FixtureRequest, certs: Pki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MosquittoBroker]:
    if find_mosquitto() is None:
        pytest.fail("mosquitto is not installed; run ./scripts/test, which installs it")
    work = tmp_path_factory.mktemp(request.param)
    template = request.param == "shipped-template"
    broker = shipped_tls_broker(work, certs.ca, commune=COMMUNE, broker_cert=certs.broker, template=template)
    try:
        yield broker
    finally:
        broker.stop()


class Probe:
    """One MQTT 5 client over TLS; paho's callbacks become waitable state."""

    def __init__(
        self,
        broker: MosquittoBroker,
        client_id: str,
        *,
        ca_file: Path | None,
        cert: pki.Issued | None = None,
        cert_files: tuple[Path, Path] | None = None,
        will_topic: str | None = None,
        background: bool = True,
    ) -> None:
        self.port = broker.port
        self.background = background
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        if ca_file is not None:
            if cert is not None:
                cert_files = (cert.cert_path, key_of(cert))
            self.client.tls_set(
                ca_certs=str(ca_file),
                certfile=str(cert_files[0]) if cert_files else None,
                keyfile=str(cert_files[1]) if cert_files else None,
            )
        if will_topic:
            self.client.will_set(will_topic, f"will of {client_id}".encode(), qos=1)
        self._cond = threading.Condition()
        self.connack: ReasonCode | None = None
        self.connack_properties: object = None
        self.disconnected = False
        self.messages: list[tuple[str, bytes]] = []
        self._pubacks: dict[int, ReasonCode] = {}
        self._subacks: dict[int, list[ReasonCode]] = {}
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe

    # -- paho callbacks (network thread) --
    def _on_connect(self, _c: object, _u: object, _f: object, rc: ReasonCode, props: object) -> None:
        with self._cond:
            self.connack = rc
            self.connack_properties = props
            self._cond.notify_all()

    def _on_disconnect(self, _c: object, _u: object, _f: object, _rc: ReasonCode, _p: object) -> None:
        with self._cond:
            self.disconnected = True
            self._cond.notify_all()

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append((msg.topic, bytes(msg.payload)))
            self._cond.notify_all()

    def _on_publish(self, _c: object, _u: object, mid: int, rc: ReasonCode, _p: object) -> None:
        with self._cond:
            self._pubacks[mid] = rc
            self._cond.notify_all()

    def _on_subscribe(self, _c: object, _u: object, mid: int, rcs: list[ReasonCode], _p: object) -> None:
        with self._cond:
            self._subacks[mid] = rcs
            self._cond.notify_all()

    def _wait(self, predicate: object, what: str) -> None:
        with self._cond:
            if not self._cond.wait_for(predicate, TIMEOUT):  # type: ignore[arg-type]
                raise AssertionError(f"timed out waiting for {what}")

    # -- actions (test thread) --
    def try_connect(self) -> bool:
        """Connect; True if the broker accepted us with a successful CONNACK."""
        try:
            self.client.connect("127.0.0.1", self.port, keepalive=30)
            # Drive the handshake by hand until the broker answers: a refused client must not
            # get paho's background thread, which would keep reconnecting.
            for _ in range(int(TIMEOUT / 0.05)):
                if self.client.loop(timeout=0.05) != mqtt.MQTT_ERR_SUCCESS or self.connack is not None:
                    break
        except (ssl.SSLError, OSError):
            return False  # refused during the TLS handshake (TLS 1.2) or right after it (TLS 1.3)
        if self.connack is None or self.connack.is_failure:
            return False
        if self.background:
            self.client.loop_start()
        return True

    def connect(self) -> Probe:
        assert self.try_connect(), f"connection refused: {self.connack}"
        return self

    def subscribe(self, topic: str) -> list[ReasonCode]:
        _, mid = self.client.subscribe(topic, qos=1)
        assert mid is not None
        self._wait(lambda: mid in self._subacks, f"SUBACK for {topic}")
        return self._subacks[mid]

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> ReasonCode:
        """Publish at QoS 1 and return the PUBACK reason code."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        self._wait(lambda: info.mid in self._pubacks, f"PUBACK for {topic}")
        return self._pubacks[info.mid]

    def wait_for(self, topic: str, payload: bytes) -> None:
        self._wait(lambda: (topic, payload) in self.messages, f"{topic} {payload!r}")

    def cut(self) -> None:
        """Drop the connection without DISCONNECT, as a power cut does: the broker sends the will.

        Only for a probe made with ``background=False``: no paho thread is left to reconnect.
        """
        assert not self.background
        sock = self.client.socket()
        assert isinstance(sock, socket.socket)
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()
        self.disconnected = True

    def close(self) -> None:
        if self.connack is not None and not self.disconnected:
            self.client.disconnect()
        if self.background:
            self.client.loop_stop()


@pytest.fixture
def probes() -> Iterator[list[Probe]]:
    made: list[Probe] = []
    yield made
    for p in made:
        p.close()


ClientFactory = Callable[..., Probe]


@pytest.fixture
def client(tls_broker: MosquittoBroker, certs: Pki, probes: list[Probe]) -> ClientFactory:
    """``client(name)`` connects as the device ``name`` or, for ``"server"``, as server:collector."""

    def make(identity: str, client_id: str | None = None, **kw: object) -> Probe:
        cert = certs.server if identity == "server" else certs.devices[identity]
        probe = Probe(tls_broker, client_id or identity, ca_file=certs.ca.cert_path, cert=cert, **kw)  # type: ignore[arg-type]
        probes.append(probe)
        return probe.connect()

    return make


# -- who may connect -------------------------------------------------------------------------------


def test_anonymous_clients_are_refused(tls_broker: MosquittoBroker, certs: Pki, probes: list[Probe]) -> None:
    plain = Probe(tls_broker, "plain", ca_file=None)  # no TLS at all
    no_cert = Probe(tls_broker, "no-cert", ca_file=certs.ca.cert_path)  # TLS, but no client certificate
    probes += [plain, no_cert]
    assert not plain.try_connect()
    assert not no_cert.try_connect()


def test_certificate_from_an_unknown_ca_is_refused(
    tls_broker: MosquittoBroker, certs: Pki, probes: list[Probe]
) -> None:
    # Same CN and commune as a real device, but signed by another CA.
    impostor = Probe(tls_broker, "counter-01", ca_file=certs.ca.cert_path, cert=certs.foreign_device)
    probes.append(impostor)
    assert not impostor.try_connect()


def test_broker_certificate_cannot_log_in_as_a_client(
    tls_broker: MosquittoBroker, certs: Pki, probes: list[Probe]
) -> None:
    # It comes from the right CA but is for serverAuth only; OpenSSL checks the purpose.
    probe = Probe(tls_broker, "localhost", ca_file=certs.ca.cert_path, cert=certs.broker)
    probes.append(probe)
    assert not probe.try_connect()


def test_device_made_key_and_csr_signed_by_the_ca_can_connect(
    tls_broker: MosquittoBroker, certs: Pki, tmp_path: Path, probes: list[Probe], client: ClientFactory
) -> None:
    # The field procedure: key and request made on the device, request signed by the CA.
    csr = keys.create_device_identity(tmp_path / "device.key", tmp_path / "device.csr", "loa-09", COMMUNE)
    issued = pki.sign_csr(certs.ca, (tmp_path / "device.csr").read_bytes(), force=True)
    assert issued.common_name == "loa-09" and csr.is_signature_valid
    server = client("server", "srv-csr")
    server.subscribe(f"{PREFIX}/dev/+/evt/#")
    device = Probe(
        tls_broker, "loa-09", ca_file=certs.ca.cert_path, cert_files=(issued.cert_path, tmp_path / "device.key")
    )
    probes.append(device)
    device.connect()
    assert accepted(device.publish(f"{PREFIX}/dev/loa-09/evt/test", b"hello"))
    server.wait_for(f"{PREFIX}/dev/loa-09/evt/test", b"hello")


def test_the_shipped_broker_announces_its_packet_limit(
    request: pytest.FixtureRequest, tls_broker: MosquittoBroker, client: ClientFactory
) -> None:
    # A device keeps its batches under the announced limit and never sends a packet over it.
    if "shipped-template" not in request.node.callspec.id:
        pytest.skip("the test broker sets no packet limit")
    device = client("counter-01")
    assert getattr(device.connack_properties, "MaximumPacketSize", None) == broker_config.DEFAULT_MAX_PACKET_SIZE


def test_a_device_cannot_take_over_another_devices_session(client: ClientFactory) -> None:
    # MQTT drops the older of two connections with one client id. The broker makes the certificate's
    # CN the client id, so a device asking for another's id gets its own and the other stays on.
    victim = client("counter-01")
    victim.subscribe(f"{PREFIX}/dev/counter-01/cmd/#")
    client("counter-02", "counter-01")
    server = client("server", "srv-takeover")
    assert accepted(server.publish(f"{PREFIX}/dev/counter-01/cmd/test", b"still here"))
    victim.wait_for(f"{PREFIX}/dev/counter-01/cmd/test", b"still here")
    assert not victim.disconnected


# -- what a device may publish ---------------------------------------------------------------------


def test_device_publishing_under_another_devices_prefix_is_refused(client: ClientFactory) -> None:
    server = client("server", "srv-forge")
    server.subscribe(f"{PREFIX}/dev/+/evt/#")
    server.subscribe(f"{PREFIX}/dev/+/status")
    server.subscribe(f"{PREFIX}/dev/+/ack")
    server.subscribe(f"{PREFIX}/dev/+/cfg/reported")
    forger = client("counter-02")

    # Mosquitto 2.0 answers an ACL-denied QoS 1 publish from an MQTT 5 client with PUBACK
    # "Not authorized" (0x87) and drops the message; the client stays connected.
    for topic in ("evt/rating", "status", "ack", "cfg/reported"):
        rc = forger.publish(f"{PREFIX}/dev/counter-01/{topic}", b"forged")
        assert rc.value == NOT_AUTHORIZED, (topic, rc)

    # The marker comes after the forgeries on the same connection: once the server has it, any
    # forgery that got through would already be there.
    assert accepted(forger.publish(f"{PREFIX}/dev/counter-02/evt/rating", b"marker"))
    server.wait_for(f"{PREFIX}/dev/counter-02/evt/rating", b"marker")
    assert [m for m in server.messages if m[1] == b"forged"] == []


@pytest.mark.parametrize(
    "topic",
    [
        "dev/counter-01/cmd/broadcast.play",  # another device's commands
        "dev/counter-02/cmd/broadcast.play",  # its own commands: only the server sends those
        "dev/counter-02/cfg/desired",
        "dev/counter-02/evtack",  # acknowledging its own events would drop them unsent
        "server/status",
        "dev/counter-02",
        "other",
    ],
)
def test_device_may_not_write_server_topics(client: ClientFactory, topic: str) -> None:
    device = client("counter-02", f"writer-{topic.replace('/', '_')}")
    assert device.publish(f"{PREFIX}/{topic}", b"x").value == NOT_AUTHORIZED


def test_device_may_write_its_own_topics(client: ClientFactory) -> None:
    server = client("server", "srv-own")
    server.subscribe(f"{PREFIX}/dev/counter-02/#")
    device = client("counter-02", "own-writer")
    for topic in ("evt/rating", "evt/health", "ack", "status", "cfg/reported"):
        assert accepted(device.publish(f"{PREFIX}/dev/counter-02/{topic}", b"ok")), topic
        server.wait_for(f"{PREFIX}/dev/counter-02/{topic}", b"ok")


def test_will_under_another_devices_prefix_is_never_published(
    tls_broker: MosquittoBroker, certs: Pki, probes: list[Probe], client: ClientFactory
) -> None:
    server = client("server", "srv-will")
    server.subscribe(f"{PREFIX}/dev/+/status")
    # Mosquitto 2.0.11 accepts the CONNECT but checks the ACL when the will is sent.
    forged = client("counter-02", "forged-will", will_topic=f"{PREFIX}/dev/counter-01/status", background=False)
    honest = client("counter-02", "honest-will", will_topic=f"{PREFIX}/dev/counter-02/status", background=False)
    forged.cut()
    honest.cut()
    server.wait_for(f"{PREFIX}/dev/counter-02/status", b"will of honest-will")
    assert b"will of forged-will" not in [payload for _, payload in server.messages]


# -- what a device may read ------------------------------------------------------------------------


def test_device_subscribed_to_everything_gets_only_its_own_messages(client: ClientFactory) -> None:
    server = client("server", "srv-snoop")
    # Retained messages for the other device are already there when the snoop subscribes.
    assert accepted(server.publish(f"{PREFIX}/dev/loa-04/cfg/desired", b"their-config", retain=True))
    assert accepted(server.publish(f"{PREFIX}/server/status", b"online", retain=True))
    snoop = client("loa-03", "snoop")
    # Mosquitto grants the subscription and filters each message by the read ACL on delivery.
    assert [rc.value for rc in snoop.subscribe("#")] == [1]
    assert [rc.value for rc in snoop.subscribe(f"{PREFIX}/dev/loa-04/cmd/#")] == [1]
    other = client("loa-04", "other")
    for topic, payload in (
        ("dev/loa-04/cmd/broadcast.play", b"their-command"),
        ("dev/loa-04/evtack", b"their-evtack"),
    ):
        assert accepted(server.publish(f"{PREFIX}/{topic}", payload))
    assert accepted(other.publish(f"{PREFIX}/dev/loa-04/evt/rating", b"their-event"))
    assert accepted(other.publish(f"{PREFIX}/dev/loa-04/status", b"their-status"))

    # Its own command, config and evtack do arrive, through the same "#" subscription, and so does
    # the collector's presence, which every device follows.
    server.publish(f"{PREFIX}/dev/loa-03/cfg/desired", b"own-config", retain=True)
    server.publish(f"{PREFIX}/dev/loa-03/evtack", b"own-evtack")
    server.publish(f"{PREFIX}/dev/loa-03/cmd/relay.test", b"own-command")
    snoop.wait_for(f"{PREFIX}/dev/loa-03/cmd/relay.test", b"own-command")
    assert sorted(snoop.messages) == [
        (f"{PREFIX}/dev/loa-03/cfg/desired", b"own-config"),
        (f"{PREFIX}/dev/loa-03/cmd/relay.test", b"own-command"),
        (f"{PREFIX}/dev/loa-03/evtack", b"own-evtack"),
        (f"{PREFIX}/server/status", b"online"),
    ]


# -- the server identity ---------------------------------------------------------------------------


def test_server_identity_can_do_its_job(client: ClientFactory) -> None:
    server = client("server", "srv-job", will_topic=f"{PREFIX}/server/status")
    for sub in ("dev/+/evt/#", "dev/+/status", "dev/+/ack", "dev/+/cfg/reported"):
        server.subscribe(f"{PREFIX}/{sub}")
    device = client("counter-01", "job-device")
    device.subscribe(f"{PREFIX}/dev/counter-01/cmd/#")
    device.subscribe(f"{PREFIX}/dev/counter-01/evtack")
    device.subscribe(f"{PREFIX}/dev/counter-01/cfg/desired")

    # device → server
    for topic in ("evt/rating", "status", "ack", "cfg/reported"):
        assert accepted(device.publish(f"{PREFIX}/dev/counter-01/{topic}", b"up"))
        server.wait_for(f"{PREFIX}/dev/counter-01/{topic}", b"up")
    # server → device
    for topic in ("evtack", "cmd/sync.resend", "cfg/desired"):
        assert accepted(server.publish(f"{PREFIX}/dev/counter-01/{topic}", b"down"))
        device.wait_for(f"{PREFIX}/dev/counter-01/{topic}", b"down")
    # server presence, retained, and read back
    assert accepted(server.publish(f"{PREFIX}/server/status", b"online", retain=True))
    assert [rc.value for rc in server.subscribe(f"{PREFIX}/server/status")] == [1]
    server.wait_for(f"{PREFIX}/server/status", b"online")


def test_server_identity_may_not_impersonate_a_device(client: ClientFactory) -> None:
    server = client("server", "srv-imp")
    for topic in ("dev/counter-01/evt/rating", "dev/counter-01/status", "dev/counter-01/ack"):
        assert server.publish(f"{PREFIX}/{topic}", b"x").value == NOT_AUTHORIZED, topic
