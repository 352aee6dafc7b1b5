"""A loudspeaker daemon (``edge run``, a subprocess) commanded through a real Mosquitto: signed
broadcast.play arrives, plays through the real audio path into a simulated card in this process,
switches a simulated LCUS relay board on a pseudo-terminal, and its proof of play reaches the
collector once. Then what must not happen: a forged or unsigned command makes no sound, and a daemon
killed with SIGKILL while playing comes back with every relay open before anything else, reports the
interrupted item and plays it again or not as its on_preempt says. Last, relay boards in trouble: an
LCUS board unplugged, a Modbus RTU board that stops answering.
"""

from __future__ import annotations

import contextlib
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
from sim.audio import SimSoundCard, measure, measure_wav, write_tone
from sim.broker import MosquittoBroker
from sim.harness import collector_rows, run_edge, wait_for, write_device_config
from sim.media_server import MediaServer
from sim.serial_relay import SimLcusBoard, SimModbusBoard, SimRelayBoard
from tests.commands_fixtures import COMMUNE, CommandedDevice, sender_for
from tests.conftest import FAST_SYNC, CollectorHandle, Device

LOUDSPEAKER = "loa-01"
TIMEOUT = 30.0
STEPS = [400.0, 600.0, 800.0, 1000.0, 1200.0, 1400.0]


@dataclass
class Rig:
    dev: CommandedDevice
    card: SimSoundCard
    board: SimRelayBoard
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

    def hardware(self) -> dict[str, Any]:
        """What a technician sees: the hardware problems `edge status` names while the daemon runs."""
        status = run_edge(["status", "--json"], env=self.dev.device.env, check=False)
        found: dict[str, Any] = json.loads(status.stdout)["hardware"] if status.returncode == 0 else {}
        return found


@contextlib.contextmanager
def loudspeaker_on(
    board: SimRelayBoard, profile_name: str, tmp_path: Path, broker: MosquittoBroker, signing_key: Ed25519PrivateKey
) -> Iterator[Rig]:
    """``edge run`` for a loudspeaker on ``board`` (the shipped profile ``profile_name``, with test timings)."""
    profile = tmp_path / f"{profile_name}.yaml"
    text = (Path(__file__).parent.parent / "firmware_config" / "relays" / f"{profile_name}.yaml").read_text()
    profile.write_text(text.replace("warm_up_s: 2", "warm_up_s: 0.3").replace("idle_off_s: 10", "idle_off_s: 30"))
    state = tmp_path / "state"
    config = write_device_config(
        tmp_path / "edge.toml", broker.url, device=LOUDSPEAKER, role="loudspeaker", state_dir=state
    )
    with SimSoundCard(tmp_path / "card") as card, MediaServer() as media:
        kid = keys.key_id(signing_key)
        env = {
            "EDGE_CONFIG": str(config),
            **FAST_SYNC,
            **card.env,
            "EDGE_COMMANDS__TRUSTED_KEYS": json.dumps({kid: keys.public_key_b64(signing_key)}),
            "EDGE_RELAYS__PROFILE": str(profile),
            "EDGE_RELAYS__PORT": board.path,
            "EDGE_RELAYS__PROBE_S": "1",  # a board with readback is read every second while idle
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


@pytest.fixture
def rig(tmp_path: Path, broker: MosquittoBroker, signing_key: Ed25519PrivateKey) -> Iterator[Rig]:
    """A loudspeaker on a 4-channel LCUS board (no readback): channel 1 the amplifier, 2..4 the zones."""
    with (
        SimLcusBoard(4, link=tmp_path / "ttyRelay") as board,
        loudspeaker_on(board, "lcus-4ch", tmp_path, broker, signing_key) as made,
    ):
        yield made


@pytest.fixture
def modbus_rig(tmp_path: Path, broker: MosquittoBroker, signing_key: Ed25519PrivateKey) -> Iterator[Rig]:
    """A loudspeaker on an 8-coil Modbus RTU board (read back): coil 0 the amplifier, 1..7 the zones."""
    with (
        SimModbusBoard(8, link=tmp_path / "ttyRS485") as board,
        loudspeaker_on(board, "modbus-8ch", tmp_path, broker, signing_key) as made,
    ):
        yield made


def test_a_signed_play_of_each_format_is_played_and_its_proof_reaches_the_collector_once(
    rig: Rig, collector: CollectorHandle
) -> None:
    collector.start()
    formats = ["wav", "mp3", "ogg"]
    sources = {
        f"tb-{ext}": rig.serve(write_tone(rig.tmp / f"thong-bao.{ext}", hz=1000, seconds=2.0, rms_dbfs=-12.0))
        for ext in formats
    }

    acks = {
        bid: rig.play({"broadcast_id": bid, "priority": "normal", "zones": ["zone-2"], "source": source})
        for bid, source in sources.items()
    }

    for bid, ack in acks.items():
        assert ack["state"] == "succeeded" and ack["result"]["state"] == "scheduled", ack
        assert wait_for(lambda bid=bid: "finished" in rig.states(bid), TIMEOUT), rig.dev.log()
    # What the captured WAV holds: the three, in the order they came, each 2.0 s of the tone at its level.
    assert wait_for(lambda: len(rig.card.items) == 3 and rig.card.items[-1].ended_at is not None, TIMEOUT)
    started = [
        e["data"]["broadcast_id"] for e in reversed(rig.dev.events("broadcast")) if e["data"]["state"] == "started"
    ]
    assert started == list(sources)
    for item in rig.card.items:
        heard = measure(rig.card.samples(item), rig.card.rate)
        assert heard.sound_s == pytest.approx(2.0, abs=0.2) and heard.sound_rms_dbfs == pytest.approx(-12.0, abs=1.0)
    # The board saw: every relay opened at start, then the amplifier (once: it stays warm), and zone-2
    # closed and opened again for each item.
    first_close = next(i for i, (_, on) in enumerate(rig.board.switch_log) if on)
    assert {n for n, _ in rig.board.switch_log[:first_close]} == {1, 2, 3, 4}
    assert rig.board.switch_log[first_close:] == [(1, True)] + [(3, True), (3, False)] * 3
    assert rig.closed() == [1]  # warm for idle_off_s

    # Exactly once: when the collector has acknowledged everything the device holds, it stores each
    # item's one finished event (by its id: a repeat on the wire is the same row), and nothing more.
    assert wait_for(lambda: rig.dev.status().get("queue", {}).get("depth") == 0, TIMEOUT), rig.dev.status()
    on_device = {
        e["data"]["broadcast_id"]: e["id"] for e in rig.dev.events("broadcast") if e["data"]["state"] == "finished"
    }
    rows = collector_rows(
        collector.db, "SELECT id, data FROM events WHERE type = 'broadcast' AND device = ? ORDER BY seq", (LOUDSPEAKER,)
    )
    collected = [(row_id, json.loads(data)) for row_id, data in rows]
    for bid, source in sources.items():
        mine = [(row_id, d) for row_id, d in collected if d["broadcast_id"] == bid]
        assert [d["state"] for _, d in mine] == ["scheduled", "started", "finished"], (bid, mine)
        finished_id, finished = mine[-1]
        assert finished_id == on_device[bid]
        assert finished["sha256"] == source["sha256"] and finished["level_dbfs"] == pytest.approx(-12.0, abs=1.0)
        assert finished["duration_s"] == pytest.approx(2.0, abs=0.2)
        assert finished["cmd_id"] == acks[bid]["cmd_id"]


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
    # Listen to what the card recorded: not one sample, let alone a sound.
    heard = measure_wav(rig.card.wav)
    assert heard.frames == 0 and heard.sound_s == 0.0 and rig.card.items == []
    assert rig.dev.events("broadcast") == []
    assert all(not on for _, on in rig.board.switch_log) and rig.closed() == []
    reasons = sorted(e["data"]["reason"] for e in rig.dev.events("security"))
    assert reasons == ["bad_signature", "malformed"], reasons


@pytest.mark.parametrize("on_preempt", ["resume", "restart", "drop"])
def test_killed_while_playing_it_opens_every_relay_first_then_reports_and_plays_again_as_asked(
    rig: Rig, on_preempt: str
) -> None:
    from tests.broadcast_fixtures import dominant_hz, stepped_tone

    long = rig.serve(stepped_tone(rig.tmp / "ban-tin.wav", STEPS, 1.0))
    later = rig.serve(write_tone(rig.tmp / "chieu.wav", seconds=0.5))
    rig.play(
        {
            "broadcast_id": "ban-tin",
            "priority": "priority",
            "zones": ["zone-1", "zone-3"],
            "source": long,
            "on_preempt": on_preempt,
        }
    )
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

    assert wait_for(lambda: "failed" in rig.states("ban-tin"), TIMEOUT), rig.dev.log()
    if on_preempt != "drop":
        assert wait_for(lambda: "finished" in rig.states("ban-tin"), TIMEOUT), rig.dev.log()
    after = rig.board.switch_log[before:]
    closes = [i for i, (_, on) in enumerate(after) if on]
    opened_first = {n for n, _ in after[: closes[0] if closes else len(after)]}
    assert opened_first == {1, 2, 3, 4}, f"not every relay was opened before the first close: {after}"

    def relays_off_then_started() -> bool:
        log = rig.dev.log()  # both runs: the second one opened every relay before the daemon started
        second_start = log.rfind("every relay off")
        return second_start != -1 and log.find(" started (boot", second_start) > second_start

    # The start's own line comes once every service is up, which may be after the item's failed event.
    assert wait_for(relays_off_then_started, TIMEOUT), rig.dev.log()
    # The proof of play: the interrupted play failed, then played again or not as its on_preempt says.
    failed = rig.broadcasts("ban-tin")[2]
    assert failed["state"] == "failed" and failed["reason"] == "interrupted"
    states = rig.states("ban-tin")
    if on_preempt == "drop":
        assert states == ["scheduled", "started", "failed"], states
        assert not closes and len(rig.card.items) == 1 and rig.closed() == []
    elif on_preempt == "restart":
        assert states == ["scheduled", "started", "failed", "started", "finished"], states
        again = rig.card.items[1]
        assert again.seconds == pytest.approx(len(STEPS), abs=0.3)  # the whole of it, from the start
        first_hz = dominant_hz(rig.card.samples(again)[: rig.card.rate // 10], rig.card.rate)
        assert abs(first_hz - STEPS[0]) < 60, first_hz
    else:
        assert states == ["scheduled", "started", "failed", "resumed", "finished"], states
        resumed = rig.broadcasts("ban-tin")[3]
        assert 0 < resumed["position_s"] <= cut_s + 0.1  # from the last checkpoint before the kill
        again = rig.card.items[1]
        assert again.seconds == pytest.approx(len(STEPS) - resumed["position_s"], abs=0.3)
        first_hz = dominant_hz(rig.card.samples(again)[: rig.card.rate // 10], rig.card.rate)
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

    assert wait_for(lambda: "relays" in rig.hardware(), TIMEOUT)
    rig.board.replug(new_path=False)
    assert wait_for(lambda: "relays" not in rig.hardware(), TIMEOUT), rig.hardware()
    rig.play({"broadcast_id": "co-lai", "priority": "normal", "zones": ["all"], "source": source})
    assert wait_for(lambda: "finished" in rig.states("co-lai"), TIMEOUT), rig.dev.log()
    status = run_edge(["status", "--json"], env=rig.dev.device.env, check=False)
    assert status.returncode == 0


def test_a_modbus_board_that_stops_answering_while_nothing_plays_shows_in_edge_status(modbus_rig: Rig) -> None:
    # Read back while idle ([relays] probe_s): the technician sees the dead board before an emergency needs it.
    rig = modbus_rig
    assert wait_for(lambda: rig.hardware() == {}, TIMEOUT), rig.hardware()
    rig.board.silence()
    assert wait_for(lambda: "not answering" in str(rig.hardware().get("relays")), TIMEOUT), rig.hardware()
    rig.board.silence(False)
    assert wait_for(lambda: "relays" not in rig.hardware(), TIMEOUT), rig.hardware()
    assert rig.dev.events("broadcast") == [] and rig.closed() == []


def test_a_modbus_board_that_stops_answering_fails_the_item_shows_in_edge_status_and_recovers(
    modbus_rig: Rig,
) -> None:
    rig = modbus_rig
    source = rig.serve(write_tone(rig.tmp / "a.wav", seconds=0.5))
    assert rig.hardware() == {}
    rig.board.silence()  # hung: the port is there, the board neither switches nor answers
    switched = len(rig.board.switch_log)

    rig.play({"broadcast_id": "treo-ban", "priority": "normal", "zones": ["all"], "source": source})

    assert wait_for(lambda: "failed" in rig.states("treo-ban"), TIMEOUT), rig.dev.log()
    failed = rig.broadcasts("treo-ban")[-1]
    assert failed["reason"] == "relay_fault" and "not answering" in failed["detail"], failed
    assert rig.states("treo-ban") == ["scheduled", "failed"]
    assert wait_for(lambda: "not answering" in str(rig.hardware().get("relays")), TIMEOUT), rig.hardware()
    assert rig.card.items == [] and len(rig.board.switch_log) == switched

    rig.board.silence(False)

    # Nobody has to send anything: the daemon opens every relay again once the board answers.
    assert wait_for(lambda: "relays" not in rig.hardware(), TIMEOUT), rig.hardware()
    assert rig.closed() == []
    rig.play({"broadcast_id": "co-lai", "priority": "normal", "zones": ["zone-7"], "source": source})
    assert wait_for(lambda: "finished" in rig.states("co-lai"), TIMEOUT), rig.dev.log()
    (item,) = rig.card.items
    assert item.seconds == pytest.approx(0.5, abs=0.2)
    assert [(n, on) for n, on in rig.board.switch_log[switched:] if on] == [(0, True), (7, True)]
    assert rig.hardware() == {}
