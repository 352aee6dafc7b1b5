"""``[[camera]]``: the counter's cameras — where the pictures come from, and how they are judged.

Each ``[[camera]]`` table is one camera over one counter::

    [[camera]]
    name = "q1-cam"
    source = "/dev/video0"          # or 0, "rtsp://user:pass@10.0.0.5/stream1", "http://...", a file
    profile = "usb-640x480"         # firmware_config/cameras/: resolution, fps, seat, privacy mask
    counter = "q1"

The list is checked as a whole: names are unique, two cameras cannot read one device, and cameras
need the ``counter`` role.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, Field, ValidationError, ValidationInfo, field_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from edge.config.evidence import EvidenceConfig
from edge.config.profile_checks import checked_profile
from edge.model import EdgeModel, Slug


class CameraConfig(EdgeModel):
    """One counter camera."""

    name: Slug = Field(description="The camera's name in events and commands, e.g. 'q1-cam' (a slug).")
    source: int | str = Field(
        description="Where the pictures come from: a USB camera index (0), a V4L2 device path (prefer "
        "/dev/v4l/by-id/...), an IP camera's rtsp:// or http(s):// URL (a password in it is never logged), "
        "or a video file (played in real time, looping: for demos and tests).",
    )
    profile: str = Field(
        description="Camera profile: a name from firmware_config/cameras/ (usb-640x480, ip-1280x720, "
        "sim-counter-640x480) or a path to a profile YAML file. It sets the resolution and frame rate, the "
        "officer's seat and the citizen-side privacy mask, in pixels of its resolution.",
    )
    counter: Slug | None = Field(
        default=None,
        description="The counter this camera watches, recorded in presence events; empty: rating.counter, "
        "else the device id.",
    )
    analytics_fps: float = Field(
        default=5.0,
        gt=0,
        le=30,
        description="How many frames a second are analysed (presence and tamper); the camera may deliver more.",
    )
    presence_on_s: float = Field(
        default=3.0,
        ge=0,
        le=600,
        description="Seconds the seat must look occupied before 'present' (someone walking past is not the officer).",
    )
    presence_hold_off_s: float = Field(
        default=30.0,
        ge=0,
        le=3600,
        description="Seconds the seat must look empty before 'absent' (an officer fetching a file has not left).",
    )
    tamper_frames: int = Field(
        default=10,
        ge=1,
        le=600,
        description="Analysed frames a tamper condition (covered, defocused, moved, frozen, lost) must hold "
        "before its 'start', and be clear before its 'end'; at 5 fps, 10 frames are 2 s.",
    )
    timeout_s: float = Field(
        default=5.0,
        gt=0,
        le=60,
        description="Seconds a stream may take to open, and to deliver each picture, before it counts as lost "
        "and is opened again.",
    )
    retry_max_s: float = Field(
        default=30.0,
        ge=0.5,
        le=600,
        description="The longest wait between attempts to open a lost camera (the wait doubles from 0.5 s).",
    )
    evidence: EvidenceConfig = Field(
        default_factory=EvidenceConfig,
        description="Clips and snapshots around low ratings, commands and tampering, with faces blurred.",
    )

    @field_validator("source")
    @classmethod
    def _source_checks(cls, value: int | str) -> int | str:
        from drivers.camera.source import parse_source  # drivers import the config's base model, not the reverse

        parse_source(value)  # ValueError: the form of the source; whether it is there is a run-time matter
        return value

    @field_validator("profile")
    @classmethod
    def _profile_checks(cls, value: str) -> str:
        from drivers.camera.profile import check_camera

        return checked_profile(value, check_camera(value))


def _check_cameras(cameras: list[CameraConfig], info: ValidationInfo) -> list[CameraConfig]:
    """Across the list: the counter role, unique names, one camera per device (key paths in errors)."""
    from drivers.camera.profile import check_camera
    from drivers.resources import Resources

    found: list[tuple[tuple[int | str, ...], str]] = []
    device = info.data.get("device")
    if cameras and device is not None and "counter" not in device.roles:
        found.append(((), "cameras need the 'counter' role in device.roles"))
    first: dict[str, int] = {}
    resources = Resources()
    for i, cam in enumerate(cameras):
        if cam.name in first:
            found.append(((i, "name"), f"{cam.name} is also the name of camera[{first[cam.name]}]"))
        first.setdefault(cam.name, i)
        for key, msg in check_camera(cam.profile, cam.source, resources=resources, holder=f"camera[{i}].source"):
            if key == "source":
                found.append(((i, "source"), msg))
    if found:
        raise ValidationError.from_exception_data(
            "camera",
            [
                InitErrorDetails(type=PydanticCustomError("camera", "{message}", {"message": msg}), loc=loc, input=None)
                for loc, msg in found
            ],
        )
    return cameras


#: The ``camera`` field of :class:`~edge.config.EdgeConfig`: the list with its cross-camera checks.
CameraList = Annotated[list[CameraConfig], AfterValidator(_check_cameras)]


def camera_counter(camera: CameraConfig, config: Any) -> str:
    """The counter a camera watches: its own setting, else ``rating.counter``, else the device id."""
    return camera.counter or config.rating.counter or config.device.id
