"""The counter with its camera in the simulator: ``edge sim`` runs the real daemon with the rating panel
and a camera watching a live simulated counter scene, which ffmpeg serves over HTTP on loopback. A test
plays the officer, the citizen and the vandal over the control socket, then reads what the simulator
printed, what the device stored and what the collector received.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from edge.cli.sim import send_request
from sim.broker import MosquittoBroker
from sim.camera_scene import CounterScene
from sim.counter import speaker_alsa_config
from sim.counter_camera import WALKERS_EVERY_S
from sim.harness import EdgeProcess, collector_rows, wait_for, write_device_config
from tests.conftest import FAST_SYNC, CollectorHandle
from tests.test_camera_evidence_rig import audit_counter_media

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs Debian's ffmpeg")

WAIT = 90.0  # seconds; reached only when a test is about to fail (face blurring is slow on a loaded machine)

#: A counter camera as an installer writes it; the simulator points its source at the simulated scene.
#: Short clips and a short hold-off keep the test brief; the rest are the defaults.
CAMERA = """
[[camera]]
name = "q1-cam"
source = "rtsp://10.0.0.5/stream1"
profile = "sim-counter-640x480"
presence_hold_off_s = 3.0

[camera.evidence]
pre_s = 2.0
post_s = 2.0
ring_s = 3.0
"""


def start_sim(tmp_path: Path, broker: MosquittoBroker, *flags: str, extra: str = "") -> tuple[EdgeProcess, Path]:
    state = tmp_path / "state"
    config = write_device_config(tmp_path / "edge.toml", broker.url, state_dir=state, extra=extra)
    alsa = speaker_alsa_config(tmp_path / "asound.conf", tmp_path / "speaker.wav")
    env = {"EDGE_CONFIG": str(config), "ALSA_CONFIG_PATH": str(alsa), "EDGE_RATING__COUNTER": "q1", **FAST_SYNC}
    sock = tmp_path / "sim.sock"
    proc = EdgeProcess(["sim", "--control", str(sock), *flags], tmp_path / "sim.log", env).start()
    # The socket opens once the camera streams and has learned the empty seat (a few seconds of video).
    assert wait_for(lambda: sock.exists() or not proc.running, WAIT), "edge sim did not open its control socket"
    assert proc.running, (tmp_path / "sim.log").read_text()
    return proc, sock


def act(sock: Path, action: str, **params: Any) -> tuple[float, str, dict[str, Any]]:
    """Have the scene do ``action`` now; returns it as a scene timeline entry, at the scene's time."""
    return ask(sock, action, **params)["t"], action, params


def ask(sock: Path, cmd: str, **args: Any) -> dict[str, Any]:
    reply = send_request(sock, {"cmd": cmd, **args}, timeout=WAIT)
    assert reply["ok"], reply
    return reply


def printed(sock: Path, what: str) -> list[dict[str, Any]]:
    """The records of one kind the simulator has printed so far."""
    return [o for o in ask(sock, "outputs", last=2000)["outputs"] if o["what"] == what]


def camera_events(sock: Path, what: str) -> list[tuple[str, str]]:
    key = "state" if what == "presence" else "kind"
    return [(o[key], o.get("state", "")) for o in printed(sock, what)]


def test_the_officer_seated_a_covered_lens_and_a_low_rating_become_events_and_a_blurred_clip_linked_to_the_rating(
    tmp_path: Path, broker: MosquittoBroker, collector: CollectorHandle
) -> None:
    collector.start()
    sim, sock = start_sim(tmp_path, broker, extra=CAMERA)
    try:
        status = ask(sock, "status")["cameras"]["q1-cam"]
        assert status["state"] == "streaming" and status["reference"]["how"] == "learned"
        assert status["source"].startswith("http://127.0.0.1:")  # the scene's stream, not the configured camera

        timeline = [act(sock, "seat")]  # what the scene did, at its own times, for the audit below
        assert wait_for(lambda: "present" in [s for s, _ in camera_events(sock, "presence")], WAIT)

        ask(sock, "done")  # the officer's button opens the rating window
        ask(sock, "press", button=4)  # "Không hài lòng": returns once the rating is committed
        (rating,) = ask(sock, "ratings")["ratings"]
        assert (rating["score"], rating["window"], rating["misuse"]) == (1, "officer", None)

        def low_rating_clip() -> list[dict[str, Any]]:
            return [e for e in ask(sock, "evidence")["evidence"] if e["reason"] == "low_rating"]

        assert wait_for(low_rating_clip, WAIT)
        timeline.append(act(sock, "cover"))
        assert wait_for(lambda: ("covered", "start") in camera_events(sock, "tamper"), WAIT)
        timeline.append(act(sock, "uncover"))
        assert wait_for(lambda: ("covered", "end") in camera_events(sock, "tamper"), WAIT)
        timeline.append(act(sock, "leave"))
        assert wait_for(lambda: [s for s, _ in camera_events(sock, "presence")][-1:] == ["absent"], WAIT)
        assert wait_for(lambda: len(ask(sock, "evidence")["evidence"]) == 2, WAIT)  # and the tamper start's
        evidence = ask(sock, "evidence")["evidence"]
        presence = printed(sock, "presence")
        tamper = printed(sock, "tamper")
        state_dir = tmp_path / "state"
        assert wait_for(
            lambda: len(collector_rows(collector.db, "SELECT id FROM events WHERE type = 'evidence'")) == 2, WAIT
        )
        scene_s = ask(sock, "status")["cameras"]["q1-cam"]["scene"]["t"]
    finally:
        stdout = sim.stop()

    # Every file the device wrote (both clips): each picture is a frame of the scene edge sim drew (the
    # same scene, rebuilt from its actions), its faces blurred where the scene put them, no face the
    # detector finds, the privacy mask black, 0600 in 0700 directories.
    scene = CounterScene(timeline, duration_s=scene_s + 1, walkers_every_s=WALKERS_EVERY_S)
    audits = audit_counter_media(tmp_path / "state" / "media", scene)
    assert len(audits) == 2 and sum(a.faces for a in audits) >= 10

    # One event per change: the officer sat down (the empty seat may have been reported first), then
    # left; one incident for the covered lens.
    assert [p["state"] for p in presence] in (["present", "absent"], ["absent", "present", "absent"])
    assert all(p["camera"] == "q1-cam" and p["counter"] == "q1" for p in presence)
    start, end = tamper
    assert [(t["kind"], t["state"]) for t in tamper] == [("covered", "start"), ("covered", "end")]
    assert start["incident"] == end["incident"]

    # The low rating's clip: linked to the rating, its file on the device as the event describes it.
    clip = next(e for e in evidence if e["reason"] == "low_rating")
    assert (clip["rating_id"], clip["window_id"], clip["rating_seq"]) == (
        rating["id"],
        rating["window_id"],
        rating["seq"],
    )
    assert (clip["camera"], clip["counter"], clip["kind"]) == ("q1-cam", "q1", "clip")
    path = Path(clip["path"])
    assert clip["on_disk"] and path.is_relative_to(state_dir / "media" / "q1-cam")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == clip["sha256"] and path.stat().st_size == clip["bytes"]
    assert path.stat().st_mode & 0o777 == 0o600
    assert clip["blurred_faces"] >= 1 and clip["masked"] is True  # the seated officer's face, at least
    assert clip["frames"] >= 15  # pre_s + post_s at 5 fps, give or take a frame dropped on a busy machine
    tamper_clip = next(e for e in evidence if e["reason"] == "tamper")
    assert tamper_clip["clip_id"] == start["clip_id"]

    # What a person watching the simulator read, line by line.
    lines = stdout.splitlines()
    assert any(f"presence seq {presence[-2]['seq']}: q1-cam officer present since" in line for line in lines)
    assert any(
        f"tamper   seq {start['seq']}: q1-cam covered start, incident {start['incident']}" in line for line in lines
    )
    assert any(f"tamper   seq {end['seq']}: q1-cam covered end, incident {end['incident']}" in line for line in lines)
    low = [
        line for line in lines if f"evidence seq {clip['seq']}: q1-cam clip {clip['clip_id']} for low_rating" in line
    ]
    assert len(low) == 1
    assert f"(rating seq {rating['seq']}, id {rating['id']}, window {rating['window_id']})" in low[0]
    assert f"sha256 {clip['sha256']}, file {path}" in low[0]

    # The commune server holds the same link.
    stored = [json.loads(d) for (d,) in collector_rows(collector.db, "SELECT data FROM events WHERE type = 'evidence'")]
    assert {(e["clip_id"], e["rating_id"], e["sha256"]) for e in stored} == {
        (e["clip_id"], e["rating_id"], e["sha256"]) for e in evidence
    }


def test_the_camera_added_with_the_flag_streams_h264_says_when_its_stream_is_lost_and_when_it_is_back(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    sim, sock = start_sim(tmp_path, broker, "--camera", "--scene", "mpegts", "--json")
    try:
        status = ask(sock, "status")["cameras"]["sim-cam"]
        assert status["source"].endswith("/camera.ts") and status["profile"] == "sim-counter-640x480"
        refused = send_request(sock, {"cmd": "cover", "colour": "red"})
        assert not refused["ok"] and "cover takes level; not colour" in refused["error"]
        unknown = send_request(sock, {"cmd": "seat", "camera": "q9-cam"})
        assert not unknown["ok"] and "no camera 'q9-cam'" in unknown["error"]

        ask(sock, "seat")
        assert wait_for(lambda: "present" in [s for s, _ in camera_events(sock, "presence")], WAIT)
        ask(sock, "stop_stream")  # the camera's cable is pulled
        assert wait_for(lambda: ("lost", "start") in camera_events(sock, "tamper"), WAIT)
        ask(sock, "start_stream")  # and plugged back: nobody restarts anything
        assert wait_for(lambda: ("lost", "end") in camera_events(sock, "tamper"), WAIT)
        status = ask(sock, "status")["cameras"]["sim-cam"]
        tamper = printed(sock, "tamper")
    finally:
        stdout = sim.stop()

    assert status["state"] == "streaming" and status["reconnects"] >= 1 and status["scene"]["officer_seated"]
    start, end = tamper
    assert (start["kind"], start["state"], end["state"]) == ("lost", "start", "end")
    assert start["incident"] == end["incident"]
    assert "unreachable: connection refused" in start["error"] or "stream ended" in start["error"]
    # --json: every printed line is a record, the camera's among them.
    records = [json.loads(line) for line in stdout.splitlines()]
    assert {"camera", "reference", "scene", "stream", "presence", "tamper"} <= {r["what"] for r in records}
    assert [r["state"] for r in records if r["what"] == "stream"] == ["stopped", "serving"]
