"""``edge test camera``: the technician's check of a camera, run as the installed command line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import pytest
import yaml

from edge.services.camera.blur import FaceBlurrer
from sim.camera_scene import CounterScene
from sim.harness import run_edge
from tests.test_camera_evidence_rig import (
    DEFAULT_SETTINGS,
    audit_file,
    counter_scene_locator,
    counter_scene_mask,
    face_model,
)

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs Debian's ffmpeg")


def test_the_simulated_camera_gives_its_rate_and_one_blurred_snapshot(tmp_path: Path) -> None:
    face_model()
    snapshot = tmp_path / "snap.jpg"
    snapshot.write_bytes(b"an older file of that name, readable by everyone")
    snapshot.chmod(0o644)  # the snapshot replacing it is 0600 all the same (audit_file checks)
    done = run_edge(["test", "camera", "--sim", "--seconds", "3", "--out", str(snapshot), "--json"])
    report = json.loads(done.stdout)
    assert report["ok"] and report["size"] == "640x480" and 3.0 <= report["fps"] <= 7.0
    assert report["blurred_faces"] >= 1
    picture = cv2.imread(str(snapshot))
    assert picture is not None and picture.shape == (480, 640, 3)
    # The scene --sim plays (the officer seated from the start, people walking past), as edge test
    # camera draws it: the snapshot is one of its frames, audited as every file the device writes is
    # (0600, the faces where the scene put them without their detail, no face the detector finds, the
    # privacy mask black).
    scene = CounterScene([(0, "seat")], duration_s=10, walkers_every_s=4)
    checker = FaceBlurrer(face_model(), DEFAULT_SETTINGS.face_threshold)
    audit = audit_file(snapshot, counter_scene_locator(scene), counter_scene_mask(scene), checker)
    assert audit.pictures == 1 and audit.faces >= 1


def test_a_camera_that_gives_no_picture_is_a_clear_failure(tmp_path: Path) -> None:
    snapshot = tmp_path / "snap.jpg"
    args = ["--source", "/dev/video63", "--profile", "usb-640x480", "--seconds", "1", "--out", str(snapshot)]
    done = run_edge(["test", "camera", *args], check=False)
    assert done.returncode != 0
    assert "/dev/video63: no such device (is the camera plugged in?)" in done.stderr
    assert not snapshot.exists()


def test_a_config_without_cameras_says_so(tmp_path: Path) -> None:
    config = tmp_path / "edge.toml"
    run_edge(["init", "--role", "counter", "--device", "c1", "--commune", "x", "-o", str(config)])
    done = run_edge(["test", "camera", "--config", str(config)], check=False)
    assert done.returncode != 0
    assert "no [[camera]] in the config" in done.stderr


def test_a_profile_with_the_seat_outside_the_frame_is_a_clear_error_with_its_key_path(tmp_path: Path) -> None:
    profile = tmp_path / "outside.yaml"
    seat = {"x": 500, "y": 100, "w": 200, "h": 240}  # 500 + 200 = 700 on a 640-pixel picture
    profile.write_text(yaml.safe_dump({"model": "test-cam", "resolution": "640x480", "seat": seat}))
    problem = "seat.w: x + w = 700 is outside the 640x480 frame (in profile outside.yaml)"
    snapshot = tmp_path / "snap.jpg"
    args = ["--source", "/dev/video63", "--profile", str(profile), "--seconds", "1", "--out", str(snapshot)]
    done = run_edge(["test", "camera", *args], check=False)
    assert done.returncode == 2 and problem in done.stderr and "Traceback" not in done.stderr
    assert not snapshot.exists()
    # The daemon refuses the config before it opens anything, naming the camera and the key.
    config = tmp_path / "edge.toml"
    config.write_text(
        f"""
[device]
id = "counter-01"
commune = "gia-ray"
roles = ["counter"]

[mqtt]
broker = "mqtt://127.0.0.1:1"

[store]
state_dir = "{tmp_path / "state"}"

[[camera]]
name = "q1-cam"
source = "/dev/video63"
profile = "{profile}"
""",
        encoding="utf-8",
    )
    done = run_edge(["run", "--config", str(config)], check=False, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"camera[0].profile: {problem}" in done.stderr
