"""``[[camera]]`` and camera profiles: every problem reported with its key path, nothing opened."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from drivers.camera import list_camera_profiles, load_camera_profile
from edge.config import parse_config
from edge.exceptions import BadProfile, ConfigError

BASE: dict[str, Any] = {
    "device": {"id": "counter-01", "commune": "gia-ray", "roles": ["counter"]},
    "mqtt": {"broker": "mqtt://127.0.0.1:1883"},
}


def config(*cameras: dict[str, Any], **sections: Any) -> Any:
    return parse_config({**BASE, **sections, "camera": list(cameras)})


def problems(*cameras: dict[str, Any], **sections: Any) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        config(*cameras, **sections)
    return info.value.problems


def write_profile(tmp_path: Path, **changes: Any) -> Path:
    data: dict[str, Any] = {
        "model": "test-cam",
        "resolution": "640x480",
        "fps": 5,
        "seat": {"x": 200, "y": 100, "w": 200, "h": 240},
    }
    data.update(changes)
    path = tmp_path / "test-cam.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_the_shipped_profiles_load() -> None:
    names = list_camera_profiles()
    assert {"usb-640x480", "ip-1280x720", "sim-counter-640x480"} <= set(names)
    for name in names:
        profile = load_camera_profile(name)
        x, y, w, h = profile.scaled(profile.resolution.width, profile.resolution.height).seat
        assert x + w <= profile.resolution.width and y + h <= profile.resolution.height


def test_a_camera_section_with_its_defaults() -> None:
    cfg = config({"name": "q1-cam", "source": "/dev/video0", "profile": "usb-640x480", "counter": "q1"})
    (cam,) = cfg.camera
    assert (cam.analytics_fps, cam.presence_on_s, cam.presence_hold_off_s, cam.tamper_frames) == (5.0, 3.0, 30.0, 10)
    assert cam.evidence.retention_days == 30
    assert config().camera == []


def test_a_seat_outside_the_frame_is_an_error_with_its_key_path(tmp_path: Path) -> None:
    profile = write_profile(tmp_path, seat=[500, 100, 200, 240])
    found = problems({"name": "q1-cam", "source": 0, "profile": str(profile)})
    assert found == [
        ("camera[0].profile", "seat.w: x + w = 700 is outside the 640x480 frame (in profile test-cam.yaml)")
    ]
    found = problems({"name": "q1-cam", "source": 0, "profile": str(write_profile(tmp_path, seat=[0, 480, 50, 50]))})
    assert found == [("camera[0].profile", "seat.y: 480 is outside the 640x480 frame (in profile test-cam.yaml)")]


def test_every_profile_problem_is_reported(tmp_path: Path) -> None:
    path = write_profile(tmp_path, resolution=[640], fps=0, seat={"x": 1, "y": 2, "w": 3}, colour="red")
    with pytest.raises(BadProfile) as info:
        load_camera_profile(path)
    assert dict(info.value.problems) == {
        "resolution": "Value error, a resolution is [width, height]".removeprefix("Value error, "),
        "fps": "Input should be greater than 0",
        "seat.h": "required key is missing",
        "colour": "unknown key",
    }


def test_a_mask_outside_the_frame_or_over_the_seat_is_an_error(tmp_path: Path) -> None:
    path = write_profile(tmp_path, privacy_mask=[[0, 400], [700, 400], [640, 480]])
    with pytest.raises(BadProfile) as info:
        load_camera_profile(path)
    assert info.value.problems == [("privacy_mask[1]", "(700, 400) is outside the 640x480 frame")]
    path = write_profile(tmp_path, privacy_mask=[[0, 0], [640, 0], [640, 480], [0, 480]])
    with pytest.raises(BadProfile) as info:
        load_camera_profile(path)
    assert info.value.problems == [
        ("privacy_mask", "covers 100% of the seat: presence needs at least half of it visible")
    ]


def test_regions_scale_with_the_picture() -> None:
    profile = load_camera_profile("ip-1280x720")
    regions = profile.scaled(640, 360)
    assert regions.seat == (230, 50, 180, 200)
    assert regions.privacy_mask == ((0, 280), (640, 280), (640, 360), (0, 360))


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("ftp://10.0.0.5/cam", "unsupported stream scheme ftp:// (use rtsp://, rtsps://, http://, https://)"),
        ("rtsp:///stream", "stream URL has no host: 'rtsp:///stream'"),
        ("http://cam:99999/x", "stream URL has a bad port: 'http://cam:99999/x'"),
        (64, "USB camera index 64 is out of range (0-63)"),
        ("", "a camera source cannot be empty"),
    ],
)
def test_a_bad_source_is_an_error(source: Any, message: str) -> None:
    found = problems({"name": "q1-cam", "source": source, "profile": "usb-640x480"})
    assert found == [("camera[0].source", message)]


def test_a_password_in_a_stream_url_is_never_in_an_error() -> None:
    found = problems({"name": "q1-cam", "source": "rtsp://admin:secret@cam:99999/x", "profile": "usb-640x480"})
    assert found == [("camera[0].source", "stream URL has a bad port: 'rtsp://cam:99999/x'")]


def test_two_cameras_cannot_share_a_name_or_a_device() -> None:
    found = problems(
        {"name": "q1-cam", "source": 0, "profile": "usb-640x480"},
        {"name": "q1-cam", "source": "/dev/video0", "profile": "usb-640x480"},
        {"name": "q2-cam", "source": "rtsp://u:p@10.0.0.5/s", "profile": "ip-1280x720"},
        {"name": "q3-cam", "source": "rtsp://10.0.0.5/s", "profile": "ip-1280x720"},
    )
    assert found == [
        ("camera[1].name", "q1-cam is also the name of camera[0]"),
        ("camera[1].source", "camera /dev/video0 is used by camera[0].source"),
        ("camera[3].source", "camera rtsp://10.0.0.5/s is used by camera[2].source"),
    ]


def test_cameras_need_the_counter_role() -> None:
    found = problems(
        {"name": "q1-cam", "source": 0, "profile": "usb-640x480"},
        device={"id": "loa-01", "commune": "gia-ray", "roles": ["loudspeaker"]},
        relays={"profile": "gpio-4ch-rpi"},
    )
    assert ("camera", "cameras need the 'counter' role in device.roles") in found


def test_an_unknown_profile_names_the_shipped_ones() -> None:
    (found,) = problems({"name": "q1-cam", "source": 0, "profile": "nope"})
    assert found[0] == "camera[0].profile"
    assert found[1].startswith("no profile 'nope' (shipped: ") and "usb-640x480" in found[1]
