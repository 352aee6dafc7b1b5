"""``edge test camera``: the technician's check of a camera, run as the installed command line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from sim.camera_scene import CounterScene
from sim.harness import run_edge

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs Debian's ffmpeg")


def test_the_simulated_camera_gives_its_rate_and_one_blurred_snapshot(tmp_path: Path) -> None:
    from tests.test_camera_evidence_rig import face_model

    face_model()
    snapshot = tmp_path / "snap.jpg"
    done = run_edge(["test", "camera", "--sim", "--seconds", "3", "--out", str(snapshot), "--json"])
    report = json.loads(done.stdout)
    assert report["ok"] and report["size"] == "640x480" and 3.0 <= report["fps"] <= 7.0
    assert report["blurred_faces"] >= 1
    assert snapshot.stat().st_mode & 0o777 == 0o600
    picture = cv2.imread(str(snapshot))
    assert picture is not None and picture.shape == (480, 640, 3)
    assert picture[415:, :].max() <= 24  # the privacy mask (the citizen's side) is black
    # The officer's face (where the scene put it) has lost its detail against the unblurred scene.
    scene = CounterScene([(0, "seat")], duration_s=12, walkers_every_s=4)
    x, y, w, h = scene.face_boxes(2.0)[0]
    sharp = cv2.Laplacian(cv2.cvtColor(scene.frame_at(2.0)[y : y + h, x : x + w], cv2.COLOR_BGR2GRAY), cv2.CV_64F)
    blurred = cv2.Laplacian(cv2.cvtColor(picture[y : y + h, x : x + w], cv2.COLOR_BGR2GRAY), cv2.CV_64F)
    assert float(np.var(blurred)) < 0.2 * float(np.var(sharp))


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
