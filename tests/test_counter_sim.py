"""The whole counter, end to end: ``edge sim`` (the real daemon on a simulated panel and speaker)
syncing through a private Mosquitto to ``edge collect``. A test plays the citizen and the officer
over the simulator's control socket, then reads what the commune server stored.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from drivers.audio import Clip
from edge import keys
from edge.cli.sim import send_request
from sim.broker import MosquittoBroker
from sim.counter import speaker_alsa_config
from sim.harness import EdgeProcess, collector_rows, wait_for
from tests.commands_fixtures import DEVICE, sender_for
from tests.conftest import CollectorHandle, Device


def start_sim(device: Device, tmp_path: Path, **env: str) -> tuple[EdgeProcess, Path]:
    sock = tmp_path / "sim.sock"
    proc = EdgeProcess(["sim", "--control", str(sock)], tmp_path / "sim.log", {**device.env, **env}).start()
    assert wait_for(lambda: sock.exists() or not proc.running, 30), "edge sim did not open its control socket"
    assert proc.running, (tmp_path / "sim.log").read_text()
    return proc, sock


def ask(sock: Path, cmd: str, **args: Any) -> dict[str, Any]:
    reply = send_request(sock, {"cmd": cmd, **args})
    assert reply["ok"], reply
    return reply


def stored(db: Path, etype: str) -> list[dict[str, Any]]:
    rows = collector_rows(db, "SELECT data FROM events WHERE type = ? ORDER BY seq", (etype,))
    return [json.loads(r[0]) for r in rows]


def test_a_press_in_the_simulator_reaches_the_collector_as_one_rating_and_is_thanked_aloud(
    device: Device, collector: CollectorHandle, tmp_path: Path
) -> None:
    wav = tmp_path / "speaker.wav"
    alsa = speaker_alsa_config(tmp_path / "asound.conf", wav)
    collector.start()
    sim, sock = start_sim(device, tmp_path, ALSA_CONFIG_PATH=str(alsa), EDGE_RATING__COUNTER="q1")
    try:
        no_camera = send_request(sock, {"cmd": "seat"})  # this counter has no [[camera]]
        assert not no_camera["ok"] and "this counter has no camera" in no_camera["error"]
        ask(sock, "assign", officer="nv-07")
        ask(sock, "open", case="HS-2026-0042")  # the queue system calls the next citizen's case
        ask(sock, "press", button=2)  # returns once the press is committed
        assert wait_for(lambda: any(o["what"] == "speaker" for o in ask(sock, "outputs")["outputs"]), 30)
        assert wait_for(lambda: stored(collector.db, "rating"), 30)
        outputs = ask(sock, "outputs")["outputs"]
    finally:
        sim.stop()

    assert stored(collector.db, "rating") == [
        {
            "counter": "q1",
            "officer": "nv-07",
            "officer_from": "assigned",
            "score": 3,
            "label": "satisfied",
            "text": "Hài lòng",
            "button": 2,
            "window": "officer",
            "window_id": stored(collector.db, "rating")[0]["window_id"],
            "case": "HS-2026-0042",
            "misuse": None,
            "panel": "gpio-4btn-rpi",
            # The first link of the device's rating chain (tests/test_chain.py).
            "chain": {**stored(collector.db, "rating")[0]["chain"], "n": 1, "prev": "0" * 64},
        }
    ]
    # What the citizen saw and heard, in order: the rating, then button 2's light, then the voice.
    whats = [(o["what"], o.get("led"), o.get("state")) for o in outputs]
    rating_at = whats.index(("rating", None, None))
    assert whats.index(("led", 2, "on"), rating_at) > rating_at
    assert whats.index(("speaker", None, None)) > rating_at
    # The speaker really played the thank-you: a couple of seconds of Vietnamese, not silence.
    clip = Clip.from_wav(wav)
    rms = float(np.sqrt(np.mean(clip.samples.astype(np.float64) ** 2)))
    assert 1.0 < clip.duration_s < 6.0 and rms > 300


def test_unplugging_the_serial_panel_is_reported_and_presses_after_replug_are_recorded(
    device: Device, collector: CollectorHandle, tmp_path: Path
) -> None:
    collector.start()
    rules = {"EDGE_RATING__MODE": "always", "EDGE_RATING__COOLDOWN_S": "0", "EDGE_RATING__BURST_PRESSES": "50"}
    sim, sock = start_sim(device, tmp_path, EDGE_PANEL__PROFILE="serial-4btn", **rules)
    try:
        ask(sock, "press", button=1)
        ask(sock, "unplug")
        assert wait_for(lambda: not ask(sock, "status")["rating"]["panel"]["connected"], 30)
        ask(sock, "replug")  # a new /dev/pts name behind the by-id style link, MCU rebooted
        assert wait_for(lambda: ask(sock, "status")["rating"]["panel"]["connected"], 30)
        ask(sock, "press", button=4)
        ask(sock, "press", button=3)
        assert wait_for(lambda: len(stored(collector.db, "rating")) == 3, 30)
        assert wait_for(lambda: [e["kind"] for e in stored(collector.db, "panel")].count("connected") >= 2, 30)
    finally:
        sim.stop()

    assert [(r["button"], r["score"], r["misuse"]) for r in stored(collector.db, "rating")] == [
        (1, 4, None),
        (4, 1, None),
        (3, 2, None),
    ]
    kinds = [e["kind"] for e in stored(collector.db, "panel") if e["kind"] in ("connected", "disconnected")]
    assert kinds[:3] == ["connected", "disconnected", "connected"]
    lost = next(e for e in stored(collector.db, "panel") if e["kind"] == "disconnected")
    assert lost["reason"] == "port_lost"


def test_the_queue_system_opens_the_window_and_assigns_the_officer_with_signed_commands(
    device: Device, collector: CollectorHandle, broker: MosquittoBroker, tmp_path: Path
) -> None:
    """``officer.assign`` and ``rating.open`` arrive as signed commands through the broker, as the
    commune server's queue system sends them; then the citizen presses once."""
    key = keys.generate_signing_key(tmp_path / "signing.key")
    trusted = json.dumps({keys.key_id(key): keys.public_key_b64(key)})
    collector.start()
    sim, sock = start_sim(device, tmp_path, EDGE_COMMANDS__TRUSTED_KEYS=trusted, EDGE_RATING__COUNTER="q2")
    server = sender_for(broker).start()
    try:
        for name, args in (("officer.assign", {"officer": "nv-12"}), ("rating.open", {"case": "HS-2026-0077"})):
            sent = server.send(DEVICE, name, args, key)
            final = server.wait_ack(sent.cmd_id, 30)
            assert final is not None and final["state"] == "succeeded", (name, final)
        ask(sock, "press", button=1)
        assert wait_for(lambda: stored(collector.db, "rating"), 30)
    finally:
        server.stop()
        sim.stop()

    (rating,) = stored(collector.db, "rating")
    assert (rating["counter"], rating["officer"], rating["case"]) == ("q2", "nv-12", "HS-2026-0077")
    assert (rating["window"], rating["misuse"]) == ("officer", None)
