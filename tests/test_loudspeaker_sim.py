"""The loudspeaker in the simulator: ``edge sim --role loudspeaker`` is the real daemon and broadcast service
on simulated relays (gpiozero MockFactory pins, or a serial relay board on a pty) and a simulated sound
card (the real sounddevice → PortAudio → ALSA path, recorded to ``STATE_DIR/sim/speaker.wav``). A test
plays the commune server and the technician in training, then checks what a person would: what the
relays did, what came out of the card, and what the commune server stored as proof of play.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile

from edge import keys
from edge.cli.sim import send_request
from sim.audio import measure_wav, write_tone
from sim.broker import MosquittoBroker
from sim.harness import EdgeProcess, collector_rows, edge_command, run_edge, wait_for
from tests.commands_fixtures import sender_for
from tests.conftest import FAST_SYNC, CollectorHandle

DEVICE = "loa-01"
#: Generous: the machine running the suite may be loaded.
WAIT = 60.0


def init_loudspeaker(tmp_path: Path, broker: MosquittoBroker) -> dict[str, str]:
    """A loudspeaker config exactly as ``edge init --role loudspeaker`` writes it; the env that uses it."""
    config = tmp_path / "edge.toml"
    identity = ["--device", DEVICE, "--commune", "gia-ray", "--broker", broker.url]
    run_edge(["init", "--role", "loudspeaker", *identity, "--state-dir", str(tmp_path / "state"), "-o", str(config)])
    return {"EDGE_CONFIG": str(config), **FAST_SYNC}


def start_sim(env: dict[str, str], tmp_path: Path, *extra: str) -> tuple[EdgeProcess, Path]:
    sock = tmp_path / "sim.sock"
    proc = EdgeProcess(["sim", "--json", "--control", str(sock), *extra], tmp_path / "sim.log", env).start()
    assert wait_for(lambda: sock.exists() or not proc.running, WAIT), "edge sim did not open its control socket"
    assert proc.running, (tmp_path / "sim.log").read_text()
    return proc, sock


def ask(sock: Path, cmd: str, **args: Any) -> dict[str, Any]:
    reply = send_request(sock, {"cmd": cmd, **args}, timeout=WAIT + 30)
    assert reply["ok"], reply
    return reply


def records(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def stored(db: Path, etype: str = "broadcast") -> list[dict[str, Any]]:
    rows = collector_rows(db, "SELECT data FROM events WHERE type = ? AND device = ? ORDER BY seq", (etype, DEVICE))
    return [json.loads(r[0]) for r in rows]


def dominant_hz(samples: np.ndarray, rate: int) -> float:
    x = samples.reshape(samples.shape[0], -1).mean(axis=1) * np.hanning(samples.shape[0])
    return float(np.fft.rfftfreq(x.shape[0], 1 / rate)[int(np.argmax(np.abs(np.fft.rfft(x))))])


def test_an_emergency_from_the_server_cuts_a_training_announcement_and_both_reach_the_collector(
    broker: MosquittoBroker, collector: CollectorHandle, tmp_path: Path
) -> None:
    """Out of the box (``edge init --role loudspeaker``, role from the config): the technician plays a
    notice with the simulator's own key, the commune server sends an emergency through the broker, a
    stranger's forged emergency is refused; the horns and the proof of play show exactly that."""
    server_key = keys.generate_signing_key(tmp_path / "server.key")
    stranger_key = keys.generate_signing_key(tmp_path / "stranger.key")
    env = init_loudspeaker(tmp_path, broker)
    env["EDGE_COMMANDS__TRUSTED_KEYS"] = json.dumps({keys.key_id(server_key): keys.public_key_b64(server_key)})
    notice = write_tone(tmp_path / "thong-bao.mp3", hz=500, seconds=3.0, rms_dbfs=-12.0)
    siren = write_tone(tmp_path / "canh-bao.wav", hz=1500, seconds=1.0, rms_dbfs=-12.0)
    collector.start()
    sim, sock = start_sim(env, tmp_path)
    server = sender_for(broker).start()
    try:
        ack = ask(sock, "play", file=str(notice), broadcast_id="thong-bao-1", zones=["zone-1", "zone-3"])
        assert ack["state"] == "succeeded" and ack["result"]["state"] == "scheduled"
        ask(sock, "wait", broadcast_id="thong-bao-1", state="started", timeout=WAIT)
        ask(sock, "wait", s=1.5)  # well into the notice
        # The server's emergency file, on the simulator's loopback media server (the device may fetch there).
        source = ask(sock, "serve", file=str(siren))["source"]
        emergency = {"broadcast_id": "canh-bao-lu", "priority": "emergency", "zones": ["all"], "source": source}
        forged = server.send(DEVICE, "broadcast.play", {**emergency, "broadcast_id": "gia-mao"}, stranger_key)
        rejected = server.wait_ack(forged.cmd_id, WAIT)
        assert rejected is not None and (rejected["state"], rejected["reason"]) == ("rejected", "unknown_key")
        sent = server.send(DEVICE, "broadcast.play", emergency, server_key)
        final = server.wait_ack(sent.cmd_id, WAIT)
        assert final is not None and final["state"] == "succeeded", final
        ask(sock, "wait", broadcast_id="thong-bao-1", state="finished", timeout=WAIT)
        played = ask(sock, "played")
        assert wait_for(lambda: len(stored(collector.db)) >= len(played["broadcasts"]), WAIT)
    finally:
        server.stop()
        out = sim.stop()

    # The proof of play, as the commune server stored it: each state once, nothing from the forgery.
    at_server = stored(collector.db)
    assert [(e["broadcast_id"], e["state"]) for e in at_server] == [
        ("thong-bao-1", "scheduled"),
        ("thong-bao-1", "started"),
        ("canh-bao-lu", "scheduled"),
        ("thong-bao-1", "preempted"),
        ("canh-bao-lu", "started"),
        ("canh-bao-lu", "finished"),
        ("thong-bao-1", "resumed"),
        ("thong-bao-1", "finished"),
    ]
    cut = at_server[3]
    assert (cut["by"], cut["by_priority"], cut["reason"]) == ("canh-bao-lu", "emergency", "preempted")
    siren_done = at_server[5]
    assert siren_done["duration_s"] == pytest.approx(1.0, abs=0.2)
    assert siren_done["level_dbfs"] == pytest.approx(-12.0, abs=1.0)
    assert siren_done["zones"] == ["zone-1", "zone-2", "zone-3"]
    notice_done = at_server[-1]
    assert notice_done["zones"] == ["zone-1", "zone-3"] and notice_done["level_dbfs"] == pytest.approx(-12.0, abs=1.0)
    assert len({e["sha256"] for e in at_server if e["broadcast_id"] == "thong-bao-1"}) == 1
    security = stored(collector.db, "security")
    assert [(s["reason"], s["verified"]) for s in security] == [("unknown_key", False)]

    # What the simulator printed: the relays as the pins switched them, and each event as committed.
    printed = records(out)
    relays = [(r["relay"], r["state"]) for r in printed if r["what"] == "relay"]
    assert relays[:4] == [("amplifier", "off"), ("zone-1", "off"), ("zone-2", "off"), ("zone-3", "off")]
    first_on = relays.index(("amplifier", "on"))
    assert relays[first_on + 1 : first_on + 3] == [("zone-1", "on"), ("zone-3", "on")]
    assert ("zone-2", "on") in relays  # the emergency went to every zone
    assert relays[-1] == ("amplifier", "off")
    shown = [(r["broadcast_id"], r["state"]) for r in printed if r["what"] == "broadcast"]
    assert shown == [(e["broadcast_id"], e["state"]) for e in at_server]

    # What came out of the card: the notice, cut by the siren, then the notice again.
    samples, rate = soundfile.read(str(tmp_path / "state" / "sim" / "speaker.wav"), dtype="float32", always_2d=True)
    windows = [samples[i : i + rate // 10] for i in range(0, len(samples) - rate // 10, rate // 10)]
    pitch = [dominant_hz(w, rate) for w in windows if np.sqrt(np.mean(w**2)) > 0.01]  # sounding windows only
    runs = [int(round(p, -2)) for i, p in enumerate(pitch) if i == 0 or round(p, -2) != round(pitch[i - 1], -2)]
    assert runs == [500, 1500, 500], pitch
    # The card heard what the proof of play claims: the notice's first part, the siren, the rest of the
    # notice from where it was cut less resume_rewind_s (1 s).
    resumed = at_server[6]
    assert resumed["position_s"] == pytest.approx(max(0.0, cut["duration_s"] - 1.0), abs=0.1)
    assert notice_done["duration_s"] == pytest.approx(3.0 - resumed["position_s"], abs=0.2)
    heard = measure_wav(tmp_path / "state" / "sim" / "speaker.wav")
    claimed = cut["duration_s"] + siren_done["duration_s"] + notice_done["duration_s"]
    assert heard.sound_s == pytest.approx(claimed, abs=0.3)


def test_a_serial_relay_board_on_a_pty_switches_the_zones_played_and_reports_its_cable(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    env = init_loudspeaker(tmp_path, broker)
    env["EDGE_RELAYS__PROFILE"] = "lcus-4ch"
    sim, sock = start_sim(env, tmp_path)
    try:
        ask(sock, "play", tone={"hz": 800, "seconds": 2.0}, broadcast_id="khu-pho-2", zones=["zone-2"])
        ask(sock, "wait", broadcast_id="khu-pho-2", state="started", timeout=WAIT)
        during = ask(sock, "relays")["relays"]
        ask(sock, "wait", broadcast_id="khu-pho-2", state="finished", timeout=WAIT)
        after = ask(sock, "relays")["relays"]
        ask(sock, "unplug")
        assert wait_for(lambda: ask(sock, "status")["broadcast"]["relays"]["problem"], WAIT)
        ask(sock, "replug")
        assert wait_for(lambda: ask(sock, "status")["broadcast"]["relays"]["problem"] is None, WAIT)
    finally:
        out = sim.stop()

    assert during == {"amplifier": True, "zone-1": False, "zone-2": True, "zone-3": False}
    assert after == {"amplifier": True, "zone-1": False, "zone-2": False, "zone-3": False}  # warm for idle_off_s
    printed = records(out)
    relays = [(r["relay"], r["state"]) for r in printed if r["what"] == "relay"]
    on = relays.index(("amplifier", "on"))
    assert relays[on : on + 3] == [("amplifier", "on"), ("zone-2", "on"), ("zone-2", "off")]
    assert ("zone-1", "on") not in relays and ("zone-3", "on") not in relays
    assert [r["state"] for r in printed if r["what"] == "cable"] == ["unplugged", "replugged"]
    (finished,) = [r for r in printed if r["what"] == "broadcast" and r["state"] == "finished"]
    assert finished["duration_s"] == pytest.approx(2.0, abs=0.2)
    assert finished["level_dbfs"] == pytest.approx(-12.0, abs=1.0)


def test_a_training_scenario_prints_what_the_relays_and_the_horns_did_and_stops_at_a_refused_command(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    env = init_loudspeaker(tmp_path, broker)
    scenario = tmp_path / "training.yaml"
    scenario.write_text(
        "- {cmd: play, text: 'Thông báo: UBND phường họp lúc 8h30.', broadcast_id: hop-to-dan-pho}\n"
        "- {cmd: wait, broadcast_id: hop-to-dan-pho, state: finished, timeout: 60}\n"
        "- {cmd: relay_test, zones: [zone-1], seconds: 0.5}\n"
        "- {cmd: wait, s: 2}\n"
        "- {cmd: play, tone: 1, zones: [cho-ben-thanh]}\n"
        "- {cmd: play, tone: 1, broadcast_id: never-played}\n",
        encoding="utf-8",
    )
    done = subprocess.run(
        [*edge_command(), "sim", "--scenario", str(scenario), "--exit-after-scenario", "--settle", "0"],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=180,
    )

    assert done.returncode == 1, done.stderr
    lines = done.stdout.splitlines()
    said = [line for line in lines if " broadcast " in line and "hop-to-dan-pho finished" in line]
    assert len(said) == 1, done.stdout
    # e.g. "hop-to-dan-pho finished, 2.61 s played at -17.3 dBFS, sha256 3f9a0c1d2e4b…"
    seconds = float(said[0].split(", ")[1].split(" s played")[0])
    assert 1.0 < seconds < 10.0
    assert "dBFS, sha256 " in said[0]
    assert any(line.split()[1:] == ["relay", "amplifier", "on"] for line in lines)
    assert any(line.split()[1:] == ["relay", "zone-1", "on"] for line in lines)
    assert any(" test " in line and "relay.test finished: zone-1 played" in line for line in lines)
    refused = [line for line in lines if " error " in line]
    assert len(refused) == 1 and "invalid_args" in refused[0] and "cho-ben-thanh" in refused[0], done.stdout
    assert "never-played" not in done.stdout
    # The voice went out through the simulated card, recorded where the simulator says.
    heard = measure_wav(tmp_path / "state" / "sim" / "speaker.wav")
    assert heard.sound_s > 1.0 and heard.sound_rms_dbfs is not None and heard.sound_rms_dbfs > -40
