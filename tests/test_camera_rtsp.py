"""The counter camera on RTSP, as IP cameras serve it: H.264 over RTP from GStreamer's RTSP server
(sim/rtsp_server.py) on loopback, read by the real OpenCV driver (FFmpeg inside OpenCV, over TCP).

What a person would check: the picture comes at the profile's rate and size; the officer who sits
down in the scene becomes a presence event; the camera's server killed is a lost camera (``tamper``
``lost`` ``start``) and, started again, capture resumes by itself (``lost`` ``end``); a server that
hangs with the connection open times out rather than hanging the camera; the technician's
``edge test camera --source rtsp://...`` reads it.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import cv2
import pytest

from drivers.camera import Camera
from sim import rtsp_server
from sim.camera_scene import SceneServer
from sim.counter_camera import SimCamera
from sim.harness import run_edge, wait_for
from tests.test_camera_capture import cameras, scene_video, settings, started  # noqa: F401 (fixtures)
from tests.test_camera_evidence_rig import face_model
from tests.test_camera_service import Rig, camera_config, lost_and_back, rig_for, rigs  # noqa: F401 (fixture)

WAIT = 30.0  # seconds; reached only when a test is about to fail

pytestmark = [
    pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs Debian's ffmpeg"),
    pytest.mark.skipif(rtsp_server.unavailable() is not None, reason=f"{rtsp_server.unavailable()}"),
]


def rate(cam: Camera, seconds: float) -> float:
    """Frames per second the camera delivers, counted over the next ``seconds``."""
    frames, t0 = cam.stats.frames, time.monotonic()
    time.sleep(seconds)
    return (cam.stats.frames - frames) / (time.monotonic() - t0)


def test_an_rtsp_stream_comes_at_the_profile_rate_and_size(
    scene_video: Path,  # noqa: F811
    cameras: list[Camera],  # noqa: F811
    tmp_path: Path,
) -> None:
    with SceneServer(scene_video, fmt="rtsp", log_path=tmp_path / "rtsp.log") as server:
        assert server.url.startswith("rtsp://127.0.0.1:")
        cam = started(cameras, settings(server.url))
        # The first few frames come at once (those FFmpeg read while it opened the stream), so the
        # rate is counted from after them.
        assert wait_for(lambda: cam.stats.frames >= 10, WAIT)
        assert 3.5 <= rate(cam, 3.0) <= 6.5  # the 5 fps of the profile and of the scene
        stats = cam.stats
        assert stats.state == "streaming" and stats.error is None and stats.reconnects == 0
        assert (stats.width, stats.height) == (640, 480)
        assert cam.backend.description == server.url


def test_a_hung_rtsp_server_times_out_and_one_restarted_is_read_again(
    scene_video: Path,  # noqa: F811
    cameras: list[Camera],  # noqa: F811
    tmp_path: Path,
) -> None:
    server = SceneServer(scene_video, fmt="rtsp", log_path=tmp_path / "rtsp.log").start()
    try:
        cam = started(cameras, settings(server.url, timeout_s=2.0, retry_max_s=1.0))
        assert wait_for(lambda: cam.state == "streaming", WAIT)
        server.stall()  # the server hangs: the TCP connection stays open, no packet comes
        # The read timeout ends the wait, and says so.
        assert wait_for(lambda: cam.stats.error is not None, WAIT, interval=0.05)
        assert "no picture within 2 s" in str(cam.stats.error)
        assert cam.state == "lost"
        server.stop()  # killed, and started again on the same port
        server.start()
        frames = cam.stats.frames
        assert wait_for(lambda: cam.state == "streaming" and cam.stats.frames > frames + 5, WAIT)
        assert cam.stats.reconnects >= 1 and cam.stats.error is None
    finally:
        server.stop()


def test_the_officer_seated_is_present_and_a_killed_rtsp_server_is_a_lost_camera_until_it_is_back(
    tmp_path: Path,
    rigs: list[Rig],  # noqa: F811
) -> None:
    # The live scene of edge sim --scene rtsp: drawn as it happens, encoded and served by the RTSP server.
    with SimCamera(work_dir=tmp_path, fmt="rtsp", walkers_every_s=8) as scene:
        assert scene.url.startswith("rtsp://127.0.0.1:")
        rig = rig_for(rigs, camera_config(tmp_path / "state", scene.url))
        # The empty seat is learned first and reported, then the officer walks in.
        assert wait_for(lambda: [e["state"] for e in rig.events("presence")] == ["absent"], WAIT)
        scene.act("seat")
        assert wait_for(lambda: [e["state"] for e in rig.events("presence")] == ["absent", "present"], WAIT)
        present = rig.events("presence")[1]
        assert (present["camera"], present["counter"]) == ("q1-cam", "q1")
        assert rig.tamper() == []

        # The camera's RTSP server is killed (the connection cut, the port closed), and comes back.
        lost_and_back(rig, scene.stop_stream, scene.start_stream, frames_after=5)
        # The officer sat through it: still present, no second event.
        assert [e["state"] for e in rig.events("presence")] == ["absent", "present"]


def test_edge_test_camera_reads_an_rtsp_camera(scene_video: Path, tmp_path: Path) -> None:  # noqa: F811
    face_model()
    snapshot = tmp_path / "snap.jpg"
    with SceneServer(scene_video, fmt="rtsp", log_path=tmp_path / "rtsp.log") as server:
        args = ["--source", server.url, "--profile", "sim-counter-640x480", "--seconds", "4", "--out", str(snapshot)]
        done = run_edge(["test", "camera", *args, "--json"])
    report = json.loads(done.stdout)
    assert report["ok"] and report["source"] == server.url and report["size"] == "640x480"
    assert report["frames"] >= 5 and report["error"] is None
    assert report["blurred_faces"] >= 1  # the officer, seated from the third second of the scene
    picture = cv2.imread(str(snapshot))
    assert picture is not None and picture.shape == (480, 640, 3)
    assert snapshot.stat().st_mode & 0o777 == 0o600
