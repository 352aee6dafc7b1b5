"""The camera driver on real sources: generated video files and HTTP streams served by ffmpeg on loopback.

Every test opens the real OpenCV backend (FFmpeg inside OpenCV) through ``open_camera``, the way the
service does, and watches the device from outside: frames arriving, the measured rate, the state, and
the error a technician would read. Bad input (an unreachable URL, a server that never answers, a
stream or a file of garbage, a missing device) must give a clear error, no crash and no hang.
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from drivers.camera import Camera, CameraUnavailable, Frame, open_camera
from drivers.resources import Resources
from edge.config.camera import CameraConfig
from edge.exceptions import ResourceBusy
from sim.camera_scene import CounterScene, SceneServer
from sim.harness import wait_for
from sim.media_server import MediaServer

WAIT = 30.0  # seconds; reached only when a test is about to fail

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs Debian's ffmpeg")


@pytest.fixture(scope="module")
def scene_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Twenty seconds of counter scene at 5 fps, MJPEG in AVI."""
    scene = CounterScene([(3, "seat")], duration_s=20, walkers_every_s=5)
    return scene.write(tmp_path_factory.mktemp("camera") / "scene.avi")


def settings(source: int | str, **changes: object) -> CameraConfig:
    return CameraConfig.model_validate(
        {"name": "cam1", "source": source, "profile": "sim-counter-640x480", "timeout_s": 2.0, **changes}
    )


@pytest.fixture
def cameras() -> Iterator[list[Camera]]:
    opened: list[Camera] = []
    yield opened
    for cam in opened:
        cam.close()


def started(cameras: list[Camera], cfg: CameraConfig, resources: Resources | None = None) -> Camera:
    cam = open_camera(cfg, resources=resources or Resources())
    cameras.append(cam)
    cam.start()
    return cam


def test_a_file_plays_in_real_time_at_its_rate_and_loops(tmp_path: Path, cameras: list[Camera]) -> None:
    short = CounterScene([], duration_s=2, walkers_every_s=None).write(tmp_path / "short.avi")  # 10 frames
    cam = started(cameras, settings(str(short)))
    t0 = time.monotonic()
    assert wait_for(lambda: cam.stats.frames >= 25, WAIT)
    elapsed = time.monotonic() - t0
    # 25 frames of a 5 fps recording take about 5 s: it is paced, not read as fast as possible, and it
    # went past its 10 frames by starting again.
    assert elapsed >= 4.0
    stats = cam.stats
    assert stats.state == "streaming" and stats.error is None
    assert 3.0 <= stats.fps <= 7.0
    assert (stats.width, stats.height) == (640, 480)
    frame = cam.latest()
    assert frame is not None and frame.image.shape == (480, 640, 3) and frame.image.dtype.name == "uint8"


def test_every_frame_reaches_subscribers_and_unread_frames_count_as_drops(
    scene_video: Path, cameras: list[Camera]
) -> None:
    cam = open_camera(settings(str(scene_video)), resources=Resources())
    cameras.append(cam)
    seen: list[Frame] = []
    cam.subscribe(seen.append)
    cam.start()
    assert wait_for(lambda: len(seen) >= 10, WAIT)
    assert [f.seq for f in seen[:10]] == list(range(1, 11))  # every decoded frame, in order
    assert all(b.mono >= a.mono and b.ts >= a.ts for a, b in itertools.pairwise(seen))
    # Nobody called latest() for these: each was replaced unread.
    assert cam.stats.drops >= 8
    before = cam.stats.drops
    last, target = 0, seen[-1].seq + 6
    deadline = time.monotonic() + WAIT
    while last < target and time.monotonic() < deadline:  # a consumer that keeps up takes each frame
        frame = cam.latest()
        last = frame.seq if frame is not None else last
        time.sleep(0.01)
    assert last >= target
    assert cam.stats.drops - before <= 2


def test_latest_never_blocks_while_a_camera_is_still_connecting(cameras: list[Camera]) -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts connections (the kernel does) and never says a word
    try:
        cam = started(cameras, settings(f"http://127.0.0.1:{silent.getsockname()[1]}/stream", timeout_s=3.0))
        t0 = time.monotonic()
        for _ in range(100):
            assert cam.latest() is None
        assert time.monotonic() - t0 < 0.5
        assert cam.stats.state == "connecting"
        # The open gives up after timeout_s with a reason, rather than waiting on FFmpeg forever.
        assert wait_for(lambda: cam.stats.error is not None, WAIT)
        assert "no picture within 3 s" in str(cam.stats.error) or "not a video stream" in str(cam.stats.error)
    finally:
        silent.close()


def test_an_http_stream_from_ffmpeg_is_read(scene_video: Path, cameras: list[Camera], tmp_path: Path) -> None:
    with SceneServer(scene_video, log_path=tmp_path / "ffmpeg.log") as server:
        cam = started(cameras, settings(server.url))
        assert wait_for(lambda: cam.stats.frames >= 15, WAIT)
        stats = cam.stats
        # About 5 fps: the rate over the last 5 s also counts the frames a loaded machine's first reads
        # found waiting together.
        assert stats.state == "streaming" and 3.0 <= stats.fps <= 8.0
        assert (stats.width, stats.height) == (640, 480)


def test_an_h264_stream_in_mpeg_ts_is_read(scene_video: Path, cameras: list[Camera], tmp_path: Path) -> None:
    with SceneServer(scene_video, fmt="mpegts", log_path=tmp_path / "ffmpeg.log") as server:
        # FFmpeg probes an MPEG-TS stream for seconds before the first picture at 5 fps: the default
        # timeout (5 s) allows for it.
        cam = started(cameras, settings(server.url, timeout_s=5.0))
        assert wait_for(lambda: cam.stats.frames >= 15, WAIT)
        assert cam.stats.state == "streaming"


def test_a_stream_killed_and_restarted_is_lost_then_resumes_by_itself(
    scene_video: Path, cameras: list[Camera], tmp_path: Path
) -> None:
    server = SceneServer(scene_video, log_path=tmp_path / "ffmpeg.log").start()
    try:
        cam = started(cameras, settings(server.url, retry_max_s=1.0))
        assert wait_for(lambda: cam.stats.frames >= 5, WAIT)
        server.stop()  # the camera is switched off: the connection is cut
        assert wait_for(lambda: cam.state == "lost", WAIT)
        assert "unreachable: connection refused" in str(cam.stats.error) or "stream ended" in str(cam.stats.error)
        frames = cam.stats.frames
        time.sleep(1.0)
        assert cam.stats.frames == frames
        server.start()
        assert wait_for(lambda: cam.state == "streaming" and cam.stats.frames > frames + 5, WAIT)
        assert cam.stats.reconnects >= 1 and cam.stats.error is None
    finally:
        server.stop()


def test_a_stalled_stream_times_out_instead_of_hanging(
    scene_video: Path, cameras: list[Camera], tmp_path: Path
) -> None:
    with SceneServer(scene_video, log_path=tmp_path / "ffmpeg.log") as server:
        cam = started(cameras, settings(server.url, timeout_s=2.0, retry_max_s=1.0))
        assert wait_for(lambda: cam.stats.frames >= 5, WAIT)
        server.stall()  # connection open, no bytes: FFmpeg alone would wait for ever
        # The read timeout ends the wait, and says so (the next try meets the stalled server and
        # times out in its own words, two seconds later).
        assert wait_for(lambda: cam.stats.error is not None, WAIT, interval=0.05)
        assert "no picture within 2 s" in str(cam.stats.error)
        assert cam.state == "lost"
        server.resume()
        server.stop()  # ffmpeg's server served its one client; a fresh one takes the reconnection
        server.start()
        frames = cam.stats.frames
        assert wait_for(lambda: cam.state == "streaming" and cam.stats.frames > frames, WAIT)
        # Closing does not wait on a hung read either.
        t0 = time.monotonic()
        cam.close()
        assert time.monotonic() - t0 < 5.0


def test_an_unreachable_url_is_a_clear_error_and_is_tried_again(cameras: list[Camera]) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cam = started(cameras, settings(f"rtsp://admin:secret@127.0.0.1:{port}/stream1", retry_max_s=1.0))
    assert wait_for(lambda: cam.stats.error is not None, WAIT)
    error = str(cam.stats.error)
    assert error == f"rtsp://127.0.0.1:{port}/stream1: unreachable: connection refused (127.0.0.1:{port})"
    assert "secret" not in error  # the camera's password is never shown
    assert cam.stats.state == "connecting" and cam.latest() is None


def test_a_stream_of_garbage_is_not_a_video(cameras: list[Camera]) -> None:
    with MediaServer() as media:
        url = media.add_file("/camera.mjpg", os.urandom(200_000), content_type="multipart/x-mixed-replace")
        cam = started(cameras, settings(url, retry_max_s=1.0))
        assert wait_for(lambda: cam.stats.error is not None, WAIT)
        assert "not a video stream OpenCV can read" in str(cam.stats.error)
        assert cam.stats.frames == 0


def test_a_file_of_garbage_is_not_a_video(tmp_path: Path, cameras: list[Camera]) -> None:
    garbage = tmp_path / "garbage.avi"
    garbage.write_bytes(os.urandom(100_000))
    cam = started(cameras, settings(str(garbage), retry_max_s=1.0))
    assert wait_for(lambda: cam.stats.error is not None, WAIT)
    assert str(cam.stats.error) == f"{garbage}: not a video file OpenCV can read"
    assert cam.stats.frames == 0 and cam.stats.state == "connecting"
    time.sleep(1.5)  # tried again (the backoff starts at 0.5 s), still up, still saying why
    assert cam.stats.error == f"{garbage}: not a video file OpenCV can read"
    assert any(t.name == "camera-cam1" for t in threading.enumerate())


def test_a_missing_device_is_a_clear_error(cameras: list[Camera], tmp_path: Path) -> None:
    cam = started(cameras, settings("/dev/video63", retry_max_s=1.0))
    assert wait_for(lambda: cam.stats.error is not None, WAIT)
    assert cam.stats.error == "/dev/video63: no such device (is the camera plugged in?)"
    missing = tmp_path / "nothing-here.avi"
    cam2 = open_camera(settings(str(missing), name="cam2"), resources=Resources())
    cameras.append(cam2)
    cam2.start()
    assert wait_for(lambda: cam2.stats.error is not None, WAIT)
    assert cam2.stats.error == f"{missing}: no such file"


def test_one_device_has_one_reader(cameras: list[Camera]) -> None:
    resources = Resources()
    first = open_camera(settings(0), resources=resources)
    cameras.append(first)
    with pytest.raises(ResourceBusy, match=r"camera /dev/video0 is used by camera\.cam1"):
        open_camera(settings("/dev/video0", name="cam2"), resources=resources)
    first.close()
    second = open_camera(settings("/dev/video0", name="cam2"), resources=resources)
    cameras.append(second)
    assert resources.holder("camera", "/dev/video0") == "camera.cam2"
    second.close()
    second.close()  # idempotent
    assert resources.holder("camera", "/dev/video0") is None


def test_a_failing_subscriber_does_not_stop_the_camera(scene_video: Path, cameras: list[Camera]) -> None:
    cam = open_camera(settings(str(scene_video)), resources=Resources())
    cameras.append(cam)
    calls = []

    def broken(frame: Frame) -> None:
        calls.append(frame.seq)
        raise RuntimeError("a consumer's bug")

    cam.subscribe(broken)
    cam.start()
    assert wait_for(lambda: len(calls) >= 5, WAIT)
    assert cam.stats.state == "streaming"


def test_a_closed_camera_cannot_start_again(scene_video: Path) -> None:
    cam = open_camera(settings(str(scene_video)), resources=Resources())
    cam.start()
    assert wait_for(lambda: cam.stats.frames > 0, WAIT)
    cam.close()
    with pytest.raises(CameraUnavailable, match="closed"):
        cam.start()
    assert not any(t.name == "camera-cam1" for t in threading.enumerate())
