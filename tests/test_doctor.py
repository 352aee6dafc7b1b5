"""``edge doctor`` on real set-ups: a healthy counter, then one problem at a time, each named with its fix.

The counter is a serial panel on a pseudo-terminal, the speaker is ALSA's ``file`` plugin, the broker
a private Mosquitto (with the shipped ACL template and client certificates for the TLS cases), the
store a real SQLite file. ``edge doctor --json`` runs as a process, as a technician runs it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from edge import pki
from edge.store import Outbox
from edge.store.host import boot_id, since_boot
from sim.broker import MosquittoBroker, free_port
from sim.counter import speaker_alsa_config
from sim.harness import run_edge, write_device_config
from tests.tls_fixtures import enrol_device, shipped_tls_broker

COMMUNE = "gia-ray"


@dataclass
class Rig:
    """A counter device's files and environment, and what was started for it."""

    tmp: Path
    config: Path
    state: Path
    env: dict[str, str]
    keep: list[Any] = field(default_factory=list)

    def doctor(self, *extra: str) -> tuple[int, list[dict[str, str]]]:
        done = run_edge(["doctor", "--json", "--timeout", "3", *extra], env=self.env, check=False, timeout=180)
        assert done.stdout, done.stderr
        report = json.loads(done.stdout)
        assert report["ok"] == (done.returncode == 0)
        return done.returncode, report["checks"]

    def make_store(self) -> Path:
        self.state.mkdir(parents=True, exist_ok=True)
        with Outbox(self.state / "events.db", owner=True) as outbox:
            for i in range(200):
                outbox.append("rating", {"score": 1 + i % 4, "n": i, "note": "x" * 200})
        return self.state / "events.db"


def named(checks: list[dict[str, str]], check: str, status: str | None = None) -> list[dict[str, str]]:
    return [c for c in checks if c["check"] == check and (status is None or c["status"] == status)]


def one(checks: list[dict[str, str]], check: str, status: str) -> dict[str, str]:
    found = named(checks, check, status)
    assert len(found) == 1, f"expected one {status} {check}, got:\n" + "\n".join(map(str, checks))
    return found[0]


@pytest.fixture
def pty_port() -> Iterator[str]:
    """A serial port that is there: the far end of a pseudo-terminal."""
    master, slave = os.openpty()
    try:
        yield os.ttyname(slave)
    finally:
        os.close(master)
        os.close(slave)


def counter_rig(tmp_path: Path, broker_url: str, port: str, **env: str) -> Rig:
    state = tmp_path / "state"
    config = write_device_config(tmp_path / "edge.toml", broker_url, state_dir=state)
    alsa = speaker_alsa_config(tmp_path / "asound.conf", tmp_path / "speaker.wav")
    signing = tmp_path / "signing.key"
    made = json.loads(run_edge(["keys", "signing", "create", str(signing), "--json"]).stdout)
    base = {
        "EDGE_CONFIG": str(config),
        "EDGE_PANEL__PROFILE": "serial-4btn",
        "EDGE_PANEL__PORT": port,
        "EDGE_COMMANDS__TRUSTED_KEYS": json.dumps({made["kid"]: made["public_key"]}),
        "ALSA_CONFIG_PATH": str(alsa),
    }
    return Rig(tmp_path, config, state, {**base, **env})


def announce_server(broker: MosquittoBroker, ts: datetime | None = None, **tls: Any) -> None:
    """The commune server's retained presence, as ``edge collect`` publishes it."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="server-presence", protocol=mqtt.MQTTv5)
    if tls:
        client.tls_set(ca_certs=str(tls["ca"]), certfile=str(tls["cert"]), keyfile=str(tls["key"]))
    host, port = broker.url.split("://")[1].split(":")
    client.connect(host, int(port))
    client.loop_start()
    stamp = (ts or datetime.now().astimezone()).isoformat(timespec="milliseconds")
    payload = json.dumps({"v": 1, "online": True, "ts": stamp})
    client.publish(f"vn/{COMMUNE}/server/status", payload, qos=1, retain=True).wait_for_publish(10)
    client.disconnect()
    client.loop_stop()


# -- a healthy counter ------------------------------------------------------------------------------


def test_a_healthy_counter_passes_with_one_line_per_check(
    tmp_path: Path, broker: MosquittoBroker, pty_port: str
) -> None:
    rig = counter_rig(tmp_path, broker.url, pty_port)
    rig.make_store()
    announce_server(broker)
    code, checks = rig.doctor()
    assert code == 0, "\n".join(map(str, checks))
    assert not named(checks, "config", "fail")
    one(checks, "store", "ok")
    one(checks, "broker.login", "ok")
    assert "the server presence received" in one(checks, "broker.roundtrip", "ok")["detail"]
    one(checks, "broker.server", "ok")
    assert pty_port in one(checks, "serial.panel", "ok")["detail"]
    one(checks, "audio.output", "ok")
    one(checks, "speech", "ok")
    one(checks, "keys", "ok")
    # The text form: one line per check, a summary, the same exit status.
    text = run_edge(["doctor", "--timeout", "3"], env=rig.env, check=False)
    assert text.returncode == 0
    lines = text.stdout.strip().splitlines()
    assert len(lines) == len(checks) + 1 and lines[-1].startswith("0 failed")
    assert all(line.split()[0] in ("OK", "WARN", "FAIL", "SKIP") for line in lines[:-1])


def test_quick_makes_no_network_round_trip(tmp_path: Path, pty_port: str) -> None:
    rig = counter_rig(tmp_path, f"mqtt://127.0.0.3:{free_port()}", pty_port)
    rig.make_store()
    code, checks = rig.doctor("--quick")
    assert code == 0, checks
    assert one(checks, "broker", "skip")["detail"].startswith("not checked (--quick")


# -- the broker --------------------------------------------------------------------------------------


def test_no_broker(tmp_path: Path, pty_port: str) -> None:
    # 127.0.0.3: an address nothing else on this machine listens on, not even on the usual ports.
    rig = counter_rig(tmp_path, f"mqtt://127.0.0.3:{free_port()}", pty_port)
    code, checks = rig.doctor()
    assert code == 1
    tcp = one(checks, "broker.tcp", "fail")
    assert "no broker on 127.0.0.3" in tcp["detail"] and "connection refused" in tcp["detail"]
    assert "broker is not running" in tcp["fix"]


def test_wrong_port(tmp_path: Path, pty_port: str) -> None:
    conf = "listener 1883 127.0.0.5\nallow_anonymous true\npersistence false\n"
    with MosquittoBroker(tmp_path / "broker", port=1883, config=conf):
        rig = counter_rig(tmp_path, "mqtt://127.0.0.5:1884", pty_port)
        code, checks = rig.doctor()
    assert code == 1
    wrong = one(checks, "broker.port", "fail")
    assert "nothing answers on port 1884" in wrong["detail"] and "port 1883 does" in wrong["detail"]
    assert 'mqtt.broker = "mqtt://127.0.0.5:1883"' in wrong["fix"]


@dataclass
class TlsSite:
    ca: pki.CommuneCA
    broker: MosquittoBroker
    cert: Path
    key: Path


@pytest.fixture
def tls_site(tmp_path: Path) -> Iterator[TlsSite]:
    """A commune broker from the shipped templates (TLS, client certificates, the ACL), and this
    device's key and certificate, made as a technician makes them."""
    ca = pki.init_ca(tmp_path / "ca", commune=COMMUNE)
    broker = shipped_tls_broker(tmp_path, ca, commune=COMMUNE)
    cert, key = enrol_device(ca, tmp_path / "device", device="counter-01", commune=COMMUNE)
    try:
        yield TlsSite(ca, broker, cert, key)
    finally:
        broker.stop()


def tls_env(site: TlsSite, ca_file: Path | None = None, key: Path | None = None) -> dict[str, str]:
    return {
        "EDGE_MQTT__TLS__CA_FILE": str(ca_file or site.ca.cert_path),
        "EDGE_MQTT__TLS__CERT_FILE": str(site.cert),
        "EDGE_MQTT__TLS__KEY_FILE": str(key or site.key),
    }


def test_over_tls_with_the_shipped_acl_the_round_trip_goes_through_the_devices_own_topics(
    tmp_path: Path, tls_site: TlsSite, pty_port: str
) -> None:
    server = pki.issue_server(tls_site.ca, "collector")
    announce_server(tls_site.broker, ca=tls_site.ca.cert_path, cert=server.cert_path, key=server.key_path)
    rig = counter_rig(tmp_path, tls_site.broker.url, pty_port, **tls_env(tls_site))
    code, checks = rig.doctor()
    assert code == 0, "\n".join(map(str, checks))
    assert "verified by the configured CA" in one(checks, "broker.tls", "ok")["detail"]
    one(checks, "tls", "ok")
    one(checks, "broker.login", "ok")
    one(checks, "broker.roundtrip", "ok")
    assert not named(checks, "broker.acl")


def test_broker_tls_with_an_unknown_ca(tmp_path: Path, tls_site: TlsSite, pty_port: str) -> None:
    other = pki.init_ca(tmp_path / "other-ca", commune=COMMUNE)
    rig = counter_rig(tmp_path, tls_site.broker.url, pty_port, **tls_env(tls_site, ca_file=other.cert_path))
    code, checks = rig.doctor()
    assert code == 1
    tls = one(checks, "broker.tls", "fail")
    assert "not signed by a CA this device trusts" in tls["detail"]
    assert "commune CA's certificate" in tls["fix"] and str(other.cert_path) in tls["fix"]
    assert not named(checks, "broker.login")  # no login attempted past a failed handshake


def test_an_unreadable_key(tmp_path: Path, tls_site: TlsSite, pty_port: str) -> None:
    spoiled = tmp_path / "spoiled.key"
    spoiled.write_text("-----BEGIN EC PRIVATE KEY-----\nnot a key\n-----END EC PRIVATE KEY-----\n")
    rig = counter_rig(tmp_path, tls_site.broker.url, pty_port, **tls_env(tls_site, key=spoiled))
    code, checks = rig.doctor()
    assert code == 1
    key = one(checks, "tls.key", "fail")
    assert str(spoiled) in key["detail"] and "not an unencrypted PEM private key" in key["detail"]
    assert "edge keys device" in key["fix"]

    missing = tmp_path / "private" / "device.key"
    rig.env["EDGE_MQTT__TLS__KEY_FILE"] = str(missing)
    code, checks = rig.doctor("--quick")
    assert code == 1
    key = one(checks, "tls.key", "fail")
    assert f"cannot read {missing}: No such file or directory" in key["detail"]
    assert f"copy the file to {missing}" in key["fix"]


# -- the state disk and the store --------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs, the state disk of a device whose SD card filled up."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_full_state_disk(tmp_path: Path, small_disk: Path, pty_port: str) -> None:
    state = small_disk / "state"
    rig = counter_rig(
        tmp_path,
        f"mqtt://127.0.0.3:{free_port()}",
        pty_port,
        EDGE_STORE__STATE_DIR=str(state),
        EDGE_STORE__MAX_BYTES=str(4 << 20),
    )
    rig.state = state
    rig.make_store()
    with open(small_disk / "filler", "wb") as f:  # whatever else filled the card
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    code, checks = rig.doctor("--quick")
    assert code == 1
    disk = one(checks, "state.disk", "fail")
    assert "the state disk is full" in disk["detail"] and "new events cannot be committed" in disk["detail"]
    assert "free space on that disk" in disk["fix"]
    # Even reading a WAL store needs room (its -shm file): said so, and not taken for damage.
    store = one(checks, "store", "fail")
    assert "while the disk is full" in store["detail"] and "free space on the state disk first" in store["fix"]
    (small_disk / "filler").unlink()
    code, checks = rig.doctor("--quick")
    assert code == 0, checks
    one(checks, "state.disk", "ok")
    one(checks, "store", "ok")


def test_a_corrupt_store(tmp_path: Path, pty_port: str) -> None:
    rig = counter_rig(tmp_path, f"mqtt://127.0.0.3:{free_port()}", pty_port)
    db = rig.make_store()
    raw = bytearray(db.read_bytes())
    page = raw.index(b'"n":100,') // 4096
    raw[page * 4096 : (page + 1) * 4096] = b"\xa5" * 4096
    db.write_bytes(bytes(raw))
    before = db.read_bytes()
    code, checks = rig.doctor("--quick")
    assert code == 1
    store = one(checks, "store", "fail")
    assert f"{db} is damaged" in store["detail"]
    assert "restart the daemon" in store["fix"] and "moves the damaged file aside" in store["fix"]
    # Read-only: the doctor moved nothing and changed nothing.
    assert db.read_bytes() == before and not list(db.parent.glob("events.db.corrupt-*"))


# -- the hardware ------------------------------------------------------------------------------------


def test_a_pin_clash(tmp_path: Path, pty_port: str) -> None:
    profile = tmp_path / "my-panel.yaml"
    text = (Path(__file__).parent.parent / "firmware_config/gpio-3btn-rpi.yaml").read_text()
    profile.write_text(text.replace("buzzer: 18 ", "buzzer: 17 "))  # the buzzer wired to button 1's pin
    rig = counter_rig(tmp_path, f"mqtt://127.0.0.3:{free_port()}", pty_port, EDGE_PANEL__PROFILE=str(profile))
    del rig.env["EDGE_PANEL__PORT"]
    rig.make_store()
    code, checks = rig.doctor("--quick")
    assert code == 1
    clash = one(checks, "config", "fail")
    assert "GPIO 17 is used by" in clash["detail"] and "my-panel.yaml" in clash["detail"]
    assert "two parts are set to use GPIO 17" in clash["fix"]
    # The rest is still checked, without the [panel] section.
    assert "panel" in one(checks, "config", "warn")["detail"]
    one(checks, "store", "ok")


def test_a_missing_serial_port(tmp_path: Path) -> None:
    rig = counter_rig(tmp_path, f"mqtt://127.0.0.3:{free_port()}", "/dev/ttyUSB9")
    code, checks = rig.doctor("--quick")
    assert code == 1
    serial = one(checks, "serial.panel", "fail")
    assert "the serial port /dev/ttyUSB9 is not there" in serial["detail"]
    assert "plug in the USB cable" in serial["fix"] and "/dev/serial/by-id" in serial["fix"]


def test_no_audio_device(tmp_path: Path, pty_port: str) -> None:
    bare = tmp_path / "no-card.conf"
    bare.write_text("</usr/share/alsa/alsa.conf>\npcm.!default { type hw card 7 }\n", encoding="utf-8")
    rig = counter_rig(tmp_path, f"mqtt://127.0.0.3:{free_port()}", pty_port, ALSA_CONFIG_PATH=str(bare))
    code, checks = rig.doctor("--quick")
    assert code == 1
    audio = one(checks, "audio.output", "fail")
    assert "no default output device" in audio["detail"]
    assert "plug in the sound card" in audio["fix"] and "aplay -l" in audio["fix"]

    rig.env["EDGE_RATING__FEEDBACK__AUDIO_DEVICE"] = "USB Audio Device"
    rig.env["ALSA_CONFIG_PATH"] = str(speaker_alsa_config(tmp_path / "asound.conf", tmp_path / "x.wav"))
    code, checks = rig.doctor("--quick")
    audio = one(checks, "audio.output", "fail")
    assert "rating.feedback.audio_device" in audio["detail"] and "'USB Audio Device'" in audio["detail"]


# -- the clock ---------------------------------------------------------------------------------------


def test_a_clock_far_behind_what_the_device_knew(tmp_path: Path, pty_port: str) -> None:
    """The daemon recorded the time while synchronised, in this boot; the clock is now three days
    behind where it must be (as after fake-hwclock restored an old time and NTP cannot answer)."""
    rig = counter_rig(tmp_path, f"mqtt://127.0.0.3:{free_port()}", pty_port)
    rig.make_store()
    ahead = time.time() + 3 * 86400
    record = {"wall": ahead, "boottime": since_boot() - 10, "boot_id": boot_id()}
    with Outbox(rig.state / "events.db", owner=True) as outbox:
        outbox.set_meta("clock", json.dumps(record))
    code, checks = rig.doctor("--quick")
    assert code == 1
    off = one(checks, "clock.offset", "fail")
    assert "the clock is 3.0 days behind from where it was when last synchronised" in off["detail"]
    assert "timedatectl set-ntp true" in off["fix"]


def test_a_clock_far_behind_the_commune_server(tmp_path: Path, broker: MosquittoBroker, pty_port: str) -> None:
    announce_server(broker, ts=datetime.now().astimezone() + timedelta(days=2))
    rig = counter_rig(tmp_path, broker.url, pty_port)
    rig.make_store()
    code, checks = rig.doctor()
    assert code == 1
    off = one(checks, "clock.offset", "fail")
    assert "at least 2.0 days behind the commune server's" in off["detail"]
