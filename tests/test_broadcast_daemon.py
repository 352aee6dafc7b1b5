"""A loudspeaker daemon (``edge run``, a subprocess) commanded through a real Mosquitto: signed
broadcast.play arrives, plays through the real audio path into a simulated card in this process,
switches a simulated LCUS relay board on a pseudo-terminal, and its proof of play reaches the
collector once. Then what must not happen: a forged or unsigned command makes no sound, and a daemon
killed with SIGKILL while playing comes back with every relay open before anything else, reports the
interrupted item and resumes it.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge import keys
from edge.commands.claims import make_claims
from edge.commands.jws import sign
from sim.audio import SimSoundCard, write_tone
from sim.broker import MosquittoBroker
from sim.harness import collector_rows, run_edge, wait_for, write_device_config
from sim.media_server import MediaServer
from sim.serial_relay import SimLcusBoard
from tests.commands_fixtures import COMMUNE, CommandedDevice, sender_for
from tests.conftest import FAST_SYNC, CollectorHandle, Device

LOUDSPEAKER = "loa-01"
TIMEOUT = 30.0
STEPS = [400.0, 600.0, 800.0, 1000.0, 1200.0, 1400.0]


@dataclass
class Rig:
    dev: CommandedDevice
    card: SimSoundCard
    board: SimLcusBoard
    media: MediaServer
    tmp: Path

    def serve(self, path: Path) -> dict[str, Any]:
        data = path.read_bytes()
        return {
            "url": self.media.add_file(f"/files/{path.name}", data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": len(data),
        }

    def play(self, args: dict[str, Any]) -> dict[str, Any]:
        sent = self.dev.sender.send(LOUDSPEAKER, "broadcast.play", args, self.dev.key)
        ack = self.dev.sender.wait_ack(sent.cmd_id, TIMEOUT)
        assert ack is not None, self.dev.log()
        return ack

    def broadcasts(self, broadcast_id: str) -> list[dict[str, Any]]:
        return [e["data"] for e in reversed(self.dev.events("broadcast")) if e["data"]["broadcast_id"] == broadcast_id]

    def states(self, broadcast_id: str) -> list[str]:
        return [d["state"] for d in self.broadcasts(broadcast_id)]

    def closed(self) -> list[int]:
        return [n for n, on in self.board.states().items() if on]


@pytest.fixture
def rig(tmp_path: Path, broker: MosquittoBroker, signing_key: Ed25519PrivateKey) -> Iterator[Rig]:
    profile = tmp_path / "lcus.yaml"
    text = (Path(__file__).parent.parent / "firmware_config" / "relays" / "lcus-4ch.yaml").read_text()
    profile.write_text(text.replace("warm_up_s: 2", "warm_up_s: 0.3").replace("idle_off_s: 10", "idle_off_s: 30"))
    state = tmp_path / "state"
    config = write_device_config(
        tmp_path / "edge.toml", broker.url, device=LOUDSPEAKER, role="loudspeaker", state_dir=state
    )
    with (
        SimSoundCard(tmp_path / "card") as card,
        SimLcusBoard(4, link=tmp_path / "ttyRelay") as board,
        MediaServer() as media,
    ):
        kid = keys.key_id(signing_key)
        env = {
            "EDGE_CONFIG": str(config),
            **FAST_SYNC,
            **card.env,
            "EDGE_COMMANDS__TRUSTED_KEYS": json.dumps({kid: keys.public_key_b64(signing_key)}),
            "EDGE_RELAYS__PROFILE": str(profile),
            "EDGE_RELAYS__PORT": board.path,
            "EDGE_BROADCAST__SOURCES__ALLOW_HTTP_HOSTS": '["127.0.0.1"]',
            "EDGE_BROADCAST__RESUME_REWIND_S": "0",
        }
        device = Device(config, state, env, tmp_path / "daemon.log")
        sender = sender_for(broker).start()
        dev = CommandedDevice(device, signing_key, kid, sender)
        try:
            yield Rig(dev.start(), card, board, media, tmp_path)
        finally:
            if dev.daemon is not None:
                dev.daemon.stop()
            sender.stop()


def test_a_signed_play_is_played_and_its_proof_reaches_the_collector_once(rig: Rig, collector: CollectorHandle) -> None:
    collector.start()
    source = rig.serve(write_tone(rig.tmp / "thong-bao.mp3", hz=1000, seconds=2.0, rms_dbfs=-12.0))

    ack = rig.play({"broadcast_id": "tb-0101", "priority": "normal", "zones": ["zone-2"], "source": source})

    assert ack["state"] == "succeeded" and ack["result"]["state"] == "scheduled", ack
    assert wait_for(lambda: "finished" in rig.states("tb-0101"), TIMEOUT), rig.dev.log()
    (item,) = rig.card.items
    assert item.seconds == pytest.approx(2.0, abs=0.2) and item.rms_dbfs == pytest.approx(-12.0, abs=1.0)
    # The board saw: every relay opened at start, then amplifier, zone-2, and zone-2 open again.
    closes = [(n, on) for n, on in rig.board.switch_log if on]
    assert closes == [(1, True), (3, True)]
    assert rig.board.switch_log[-1] == (3, False) and rig.closed() == [1]  # the amplifier stays warm

    def collected() -> list[dict[str, Any]]:
        rows = collector_rows(collector.db, "SELECT data FROM events WHERE type = 'broadcast' ORDER BY seq")
        return [d for d in (json.loads(r[0]) for r in rows) if d["broadcast_id"] == "tb-0101"]

    assert wait_for(lambda: [d["state"] for d in collected()] == ["scheduled", "started", "finished"], TIMEOUT)
    finished = collected()[-1]
    assert finished["sha256"] == source["sha256"] and finished["level_dbfs"] == pytest.approx(-12.0, abs=1.0)
    assert finished["cmd_id"] == ack["cmd_id"]


def test_a_forged_or_unsigned_play_makes_no_sound(rig: Rig) -> None:
    source = rig.serve(write_tone(rig.tmp / "gia-mao.wav", hz=1000, seconds=1.0))
    args = {"broadcast_id": "gia-mao", "priority": "emergency", "zones": ["all"], "source": source}
    intruder = Ed25519PrivateKey.generate()
    claims = make_claims(device=LOUDSPEAKER, commune=COMMUNE, name="broadcast.play", args=args)
    topic = f"vn/{COMMUNE}/dev/{LOUDSPEAKER}/cmd/broadcast.play"
    rig.dev.sender.publish(topic, sign(claims, intruder, rig.dev.kid))  # the right kid, the wrong key
    rig.dev.sender.publish(topic, json.dumps({"v": 1, "name": "broadcast.play", "args": args}))  # unsigned

    assert wait_for(lambda: len(rig.dev.events("security")) >= 2, TIMEOUT), rig.dev.log()
    time.sleep(2.0)  # what a hijacked loudspeaker would have started by now
    assert rig.card.items == []
    assert rig.dev.events("broadcast") == []
    assert all(not on for _, on in rig.board.switch_log) and rig.closed() == []
    reasons = {e["data"]["reason"] for e in rig.dev.events("security")}
    assert reasons & {"bad_signature", "malformed"}, reasons


def test_killed_while_playing_it_opens_every_relay_first_then_reports_and_resumes(rig: Rig) -> None:
    from tests.broadcast_fixtures import dominant_hz, stepped_tone

    long = rig.serve(stepped_tone(rig.tmp / "ban-tin.wav", STEPS, 1.0))
    later = rig.serve(write_tone(rig.tmp / "chieu.wav", seconds=0.5))
    rig.play({"broadcast_id": "ban-tin", "priority": "priority", "zones": ["zone-1", "zone-3"], "source": long})
    in_an_hour = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(time.time() + 3600))
    rig.play({"broadcast_id": "chieu", "priority": "normal", "zones": ["all"], "source": later, "start_at": in_an_hour})
    assert wait_for(lambda: bool(rig.card.items) and rig.card.items[0].seconds > 3.2, TIMEOUT), rig.dev.log()

    assert rig.dev.daemon is not None
    rig.dev.daemon.kill()  # SIGKILL: no clean-up at all
    assert wait_for(lambda: rig.card.items[0].ended_at is not None, 10)
    cut_s = rig.card.items[0].seconds
    assert rig.closed() == [1, 2, 4], "the board keeps what the dead process left on"
    before = len(rig.board.switch_log)

    rig.dev.start()

    assert wait_for(lambda: "finished" in rig.states("ban-tin"), TIMEOUT), rig.dev.log()
    after = rig.board.switch_log[before:]
    first_close = next(i for i, (_, on) in enumerate(after) if on)
    assert {n for n, on in after[:first_close]} >= {1, 2, 4}, "relays closed before every relay was opened"
    log = rig.dev.log()  # both runs: the second one opened every relay before the daemon started
    second_start = log.rfind("every relay off")
    assert second_start != -1 and log.find(" started (boot", second_start) > second_start
    # The proof of play: the interrupted play failed, then resumed near where it was cut.
    states = rig.states("ban-tin")
    assert states == ["scheduled", "started", "failed", "resumed", "finished"], states
    failed, resumed = rig.broadcasts("ban-tin")[2:4]
    assert failed["reason"] == "interrupted"
    assert 0 < resumed["position_s"] <= cut_s + 0.1  # from the last checkpoint before the kill
    again = rig.card.items[1]
    assert again.seconds == pytest.approx(len(STEPS) - resumed["position_s"], abs=0.3)
    samples = rig.card.samples(again)
    first_hz = dominant_hz(samples[: rig.card.rate // 10], rig.card.rate)
    assert abs(first_hz - STEPS[int(resumed["position_s"])]) < 60, (first_hz, resumed["position_s"])
    # The schedule is intact: the afternoon item still waits for its time.
    rows = collector_rows(rig.dev.device.db, "SELECT broadcast_id, state FROM broadcast_schedule")
    assert rows == [("chieu", "scheduled")]


def test_a_relay_board_that_goes_away_fails_the_item_and_recovers(rig: Rig) -> None:
    source = rig.serve(write_tone(rig.tmp / "a.wav", seconds=0.5))
    rig.board.unplug()

    rig.play({"broadcast_id": "mat-ket-noi", "priority": "normal", "zones": ["all"], "source": source})

    assert wait_for(lambda: "failed" in rig.states("mat-ket-noi"), TIMEOUT), rig.dev.log()
    assert rig.broadcasts("mat-ket-noi")[-1]["reason"] == "relay_fault"
    assert rig.card.items == []

    def hardware() -> dict[str, Any]:
        # What a technician sees: `edge status` names the relay problem while the daemon runs.
        status = run_edge(["status", "--json"], env=rig.dev.device.env, check=False)
        found: dict[str, Any] = json.loads(status.stdout)["hardware"] if status.returncode == 0 else {}
        return found

    assert wait_for(lambda: "relays" in hardware(), TIMEOUT)
    rig.board.replug(new_path=False)
    assert wait_for(lambda: "relays" not in hardware(), TIMEOUT), hardware()
    rig.play({"broadcast_id": "co-lai", "priority": "normal", "zones": ["all"], "source": source})
    assert wait_for(lambda: "finished" in rig.states("co-lai"), TIMEOUT), rig.dev.log()
    status = run_edge(["status", "--json"], env=rig.dev.device.env, check=False)
    assert status.returncode == 0
