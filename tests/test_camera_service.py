"""The camera service on real parts: OpenCV reading the simulated counter (a file, or an HTTP stream
served by ffmpeg on loopback), the real analytics, and events committed to a real SQLite outbox.

What a person would check: the officer's presence and the camera's troubles arrive as events, once
each, with an incident id tying a tamper's start to its end; a camera whose stream dies and comes back
says so and carries on by itself; a calibration survives a restart; bad input (a black camera, a
missing device, a damaged recording) gives events and errors, never a crash.
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from drivers.resources import Resources
from edge.commands.registry import CommandFailed, CommandRegistry
from edge.config import EdgeConfig, parse_config
from edge.services import ServiceContext, build_services
from edge.services.camera.service import CameraService
from edge.store import Outbox
from sim.camera_scene import CounterScene, SceneServer
from sim.harness import wait_for
from sim.media_server import MediaServer
from tests.test_camera_evidence_rig import audit_counter_media, face_model

WAIT = 60.0  # seconds; reached only when a test is about to fail

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs Debian's ffmpeg")

FAST = {"presence_on_s": 1.0, "presence_hold_off_s": 3.0, "tamper_frames": 5, "timeout_s": 2.0, "retry_max_s": 1.0}


def camera_config(state_dir: Path, source: str, **changes: Any) -> EdgeConfig:
    return parse_config(
        {
            "device": {"id": "counter-01", "commune": "gia-ray", "roles": ["counter"]},
            "mqtt": {"broker": "mqtt://127.0.0.1:1"},
            "store": {"state_dir": str(state_dir)},
            "rating": {"counter": "q1"},
            "camera": [{"name": "q1-cam", "source": source, "profile": "sim-counter-640x480", **FAST, **changes}],
        }
    )


class Rig:
    """A camera service on a real outbox, with its committed events at hand."""

    def __init__(self, config: EdgeConfig) -> None:
        self.config = config
        self.outbox = Outbox(config.db_path)
        self.registry = CommandRegistry()
        self.service = CameraService(config, self.outbox, self.registry, Resources(), evidence=False)
        self.service.start()

    def events(self, event_type: str) -> list[dict[str, Any]]:
        return [e.data for e in reversed(self.outbox.list_events(type=event_type, limit=1000))]

    def tamper(self) -> list[tuple[str, str]]:
        return [(e["kind"], e["state"]) for e in self.events("tamper")]

    def close(self) -> None:
        self.service.stop()
        self.outbox.close()


@pytest.fixture
def rigs() -> Iterator[list[Rig]]:
    made: list[Rig] = []
    yield made
    for rig in made:
        rig.close()


def rig_for(rigs: list[Rig], config: EdgeConfig) -> Rig:
    rig = Rig(config)
    rigs.append(rig)
    return rig


@pytest.fixture(scope="module")
def counter_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A minute at the counter: empty for the first seconds (the reference is learned), then the officer
    sits and stays, people walking past."""
    scene = CounterScene([(9, "seat")], duration_s=60, walkers_every_s=8)
    return scene.write(tmp_path_factory.mktemp("camera") / "counter.avi")


def lost_and_back(rig: Rig, stop: Callable[[], Any], start: Callable[[], Any], *, frames_after: int) -> None:
    """The camera's stream dies (``stop``): one ``lost`` ``start`` with its reason; it comes back
    (``start``) and nobody restarts anything on the device: the ``end`` of the same incident, then
    ``frames_after`` more frames and a streaming camera with no tamper and no error."""
    stop()
    assert wait_for(lambda: rig.tamper() == [("lost", "start")], WAIT)
    (began,) = rig.events("tamper")
    assert "unreachable: connection refused" in began["error"] or "stream ended" in began["error"]
    start()
    assert wait_for(lambda: rig.tamper() == [("lost", "start"), ("lost", "end")], WAIT)
    began, ended = rig.events("tamper")
    assert began["incident"] == ended["incident"]
    watch = rig.service.watches["q1-cam"]
    assert watch.camera.stats.reconnects >= 1
    frames = watch.camera.stats.frames
    assert wait_for(lambda: watch.camera.stats.frames > frames + frames_after, WAIT)
    status = rig.service.status()["q1-cam"]
    assert status["state"] == "streaming" and status["tamper"] == [] and status["errors"] == 0


def test_presence_and_a_lost_stream_become_events_and_capture_resumes(
    tmp_path: Path, rigs: list[Rig], counter_video: Path
) -> None:
    server = SceneServer(counter_video, log_path=tmp_path / "ffmpeg.log").start()
    try:
        rig = rig_for(rigs, camera_config(tmp_path / "state", server.url))
        assert wait_for(lambda: [e["state"] for e in rig.events("presence")] == ["absent", "present"], WAIT)
        present = rig.events("presence")[1]
        assert (present["camera"], present["counter"]) == ("q1-cam", "q1")
        assert datetime.fromisoformat(present["since"]).tzinfo is not None  # ISO 8601 with the zone
        lost_and_back(rig, server.stop, server.start, frames_after=10)
    finally:
        server.stop()


def test_calibration_is_taken_on_command_and_survives_a_restart(
    tmp_path: Path, rigs: list[Rig], counter_video: Path
) -> None:
    config = camera_config(tmp_path / "state", str(counter_video))
    rig = rig_for(rigs, config)
    handler = rig.registry.get("camera.calibrate")
    result = handler.handler(handler.parse_args({"camera": "q1-cam"}), None)  # type: ignore[arg-type]
    assert result is not None and result["camera"] == "q1-cam" and result["frames"] == 15
    stored = tmp_path / "state" / "camera" / "q1-cam.reference.npz"
    assert stored.stat().st_mode & 0o777 == 0o600
    assert rig.service.status()["q1-cam"]["reference"]["how"] == "calibrated"
    with pytest.raises(CommandFailed, match="no camera 'q9-cam'"):
        handler.handler(handler.parse_args({"camera": "q9-cam"}), None)  # type: ignore[arg-type]
    rig.close()
    rigs.remove(rig)
    again = rig_for(rigs, config)
    assert again.service.status()["q1-cam"]["reference"]["how"] == "calibrated"


def test_calibrating_a_camera_that_gives_no_picture_fails_with_the_reason(tmp_path: Path, rigs: list[Rig]) -> None:
    rig = rig_for(rigs, camera_config(tmp_path / "state", "/dev/video63"))
    with pytest.raises(CommandFailed) as info:
        rig.service.watches["q1-cam"].calibrate(timeout=3.0)
    assert info.value.reason == "calibration_failed"
    assert "/dev/video63: no such device" in info.value.detail


def test_a_black_camera_is_covered(tmp_path: Path, rigs: list[Rig]) -> None:
    black = CounterScene([(0, "cover", {"level": 0})], duration_s=10, walkers_every_s=None)
    video = black.write(tmp_path / "black.avi")
    rig = rig_for(rigs, camera_config(tmp_path / "state", str(video)))
    assert wait_for(lambda: rig.tamper() == [("covered", "start")], WAIT)
    (start,) = rig.events("tamper")
    assert start["mean"] < 20 and start["incident"]
    assert rig.events("presence") == []  # nothing can be said of a seat nobody can see
    assert running(rig)


def test_a_missing_device_is_a_lost_camera_with_its_reason(tmp_path: Path, rigs: list[Rig]) -> None:
    rig = rig_for(rigs, camera_config(tmp_path / "state", "/dev/video63"))
    assert wait_for(lambda: rig.tamper() == [("lost", "start")], WAIT)
    (start,) = rig.events("tamper")
    assert start["error"] == "/dev/video63: no such device (is the camera plugged in?)"
    assert rig.service.status()["q1-cam"]["state"] == "connecting"
    assert running(rig)


def running(rig: Rig) -> bool:
    """The camera's analysis thread and its reader are still there, and the analysis never raised."""
    watch = rig.service.watches["q1-cam"]
    threads = [watch._thread, watch.camera.reader_thread]
    return all(t is not None and t.is_alive() for t in threads) and rig.service.status()["q1-cam"]["errors"] == 0


def test_an_unreachable_url_is_a_lost_camera_with_its_reason(tmp_path: Path, rigs: list[Rig]) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rig = rig_for(rigs, camera_config(tmp_path / "state", f"rtsp://admin:secret@127.0.0.1:{port}/stream1"))
    assert wait_for(lambda: rig.tamper() == [("lost", "start")], WAIT)
    (start,) = rig.events("tamper")
    assert start["error"] == f"rtsp://127.0.0.1:{port}/stream1: unreachable: connection refused (127.0.0.1:{port})"
    status = rig.service.status()["q1-cam"]
    assert status["error"] == start["error"] and status["state"] == "connecting"
    assert "secret" not in str(status) and "secret" not in str(rig.events("tamper"))
    assert running(rig)


def test_a_stream_of_garbage_is_a_lost_camera_with_its_reason(tmp_path: Path, rigs: list[Rig]) -> None:
    with MediaServer() as media:
        url = media.add_file("/camera.mjpg", os.urandom(200_000), content_type="multipart/x-mixed-replace")
        rig = rig_for(rigs, camera_config(tmp_path / "state", url))
        assert wait_for(lambda: rig.tamper() == [("lost", "start")], WAIT)
        (start,) = rig.events("tamper")
        assert "not a video stream OpenCV can read" in start["error"]
        assert rig.service.status()["q1-cam"]["frames"] == 0
        assert running(rig)


def test_a_damaged_recording_gives_an_event_not_a_crash(tmp_path: Path, rigs: list[Rig], counter_video: Path) -> None:
    data = counter_video.read_bytes()
    damaged = tmp_path / "damaged.avi"
    damaged.write_bytes(data[:20_000] + bytes(len(data) - 20_000))  # a header, then nothing readable
    rig = rig_for(rigs, camera_config(tmp_path / "state", str(damaged)))
    # Whatever FFmpeg makes of it (one broken picture again and again, or nothing at all), the
    # camera says so with a tamper event and the service keeps running.
    assert wait_for(lambda: rig.tamper() != [], WAIT)
    assert rig.tamper()[0] in (("frozen", "start"), ("lost", "start"), ("covered", "start"))
    assert running(rig)


def test_the_counter_role_builds_the_camera_service_next_to_the_rating_service(tmp_path: Path) -> None:
    config = parse_config(
        {
            "device": {"id": "counter-01", "commune": "gia-ray", "roles": ["counter"]},
            "mqtt": {"broker": "mqtt://127.0.0.1:1"},
            "store": {"state_dir": str(tmp_path / "state")},
            "panel": {"profile": "gpio-4btn-rpi"},
            "camera": [{"name": "q1-cam", "source": "/dev/video63", "profile": "sim-counter-640x480"}],
        }
    )
    outbox = Outbox(config.db_path)
    registry = CommandRegistry()
    try:
        services = build_services(ServiceContext(config, outbox, registry, Resources()))
        assert [type(s).__name__ for s in services] == ["RatingService", "CameraService"]
        rating, cameras = services
        assert cameras.on_rating in rating._observers  # type: ignore[attr-defined]
        assert {"camera.calibrate", "snapshot.take", "rating.open"} <= {r.name for r in registry}
    finally:
        outbox.close()


def test_a_tamper_start_records_a_blurred_clip_linked_to_it(tmp_path: Path, counter_video: Path) -> None:
    face_model()  # the set-up step installs it; without it no picture is ever written
    scene = CounterScene([(9, "seat"), (14, "cover"), (22, "uncover")], duration_s=30, walkers_every_s=8)
    video = scene.write(tmp_path / "cover.avi")
    config = camera_config(tmp_path / "state", str(video))
    config.camera[0].evidence.pre_s = 2.0
    config.camera[0].evidence.post_s = 1.0
    outbox = Outbox(config.db_path)
    service = CameraService(config, outbox, CommandRegistry(), Resources())
    service.start()
    try:

        def evidence() -> list[Any]:
            return [e.data for e in outbox.list_events(type="evidence")]

        assert wait_for(lambda: evidence() != [], WAIT)
        (clip,) = evidence()
        starts = [e.data for e in outbox.list_events(type="tamper") if e.data["state"] == "start"]
        assert [(s["kind"], s["clip_id"]) for s in starts] == [("covered", clip["clip_id"])]
        assert (clip["reason"], clip["kind"], clip["camera"]) == ("tamper", "clip", "q1-cam")
        (written,) = (tmp_path / "state" / "media" / "q1-cam").glob(f"{clip['clip_id']}.*")
        assert written.stat().st_size == clip["bytes"]
    finally:
        service.stop()
        outbox.close()
    # Every file the service wrote: the seated officer's face blurred where the scene put it (the clip
    # starts pre_s before the cover), no face the detector finds, the mask black, 0600.
    audits = audit_counter_media(tmp_path / "state" / "media", scene)
    assert written in [a.path for a in audits] and sum(a.faces for a in audits) >= 3
