"""Camera profiles (``firmware_config/cameras/*.yaml``): what the camera sees and where the seat is.

A profile fixes the picture the camera is asked for (``resolution``, ``fps``, and for USB cameras the
``fourcc`` pixel format) and, **in pixels of that resolution**, the two regions the counter's software
needs: the officer's ``seat`` (a rectangle, where presence is judged) and an optional
``privacy_mask`` (a polygon, usually the citizen's side of the desk, blacked out in every picture the
device writes and left out of the analytics). Pixels are what a technician reads off a snapshot; if a
camera delivers another resolution than its profile asks for, the regions are scaled with the picture
(:meth:`CameraProfile.scaled`).

Validation has the other profiles' two layers: pydantic checks each value, then
:func:`camera_profile_problems` checks what needs the whole profile (a seat that leaves the frame, a
mask vertex outside it, a seat hidden by the mask). Every error carries a key path (``seat.w``).
:func:`check_camera` validates a ``[[camera]]`` section's profile and source without opening anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from drivers.profiles import (
    MODEL_ID,
    ProfileModel,
    firmware_config_dir,
    read_profile_data,
    section_profile,
    validate_profile,
)
from drivers.resources import Resources
from edge.exceptions import ResourceBusy
from edge.model import EdgeModel

#: The smallest seat a presence judgement is made on, in pixels of the profile's resolution.
MIN_SEAT_PX = 16


def camera_profile_dir() -> Path:
    """Where camera profiles live: ``firmware_config/cameras/``."""
    return firmware_config_dir() / "cameras"


def list_camera_profiles() -> list[str]:
    """Names of the shipped camera profiles (file stems in ``firmware_config/cameras/``)."""
    return sorted(p.stem for p in camera_profile_dir().glob("*.yaml"))


class Resolution(EdgeModel):
    """A picture size in pixels. Shorthand: ``[640, 480]`` or ``"640x480"``."""

    width: int = Field(ge=32, le=7680, description="picture width in pixels")
    height: int = Field(ge=32, le=4320, description="picture height in pixels")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, str):
            w, sep, h = data.lower().partition("x")
            if not sep or not w.strip().isdigit() or not h.strip().isdigit():
                raise ValueError(f"{data!r} is not a resolution: write 640x480 or [640, 480]")
            return {"width": int(w), "height": int(h)}
        if isinstance(data, list | tuple):
            if len(data) != 2:
                raise ValueError("a resolution is [width, height]")
            return {"width": data[0], "height": data[1]}
        return data

    def __str__(self) -> str:
        return f"{self.width}x{self.height}"


class Rect(EdgeModel):
    """A rectangle in pixels: top-left corner ``x``, ``y`` and size ``w`` x ``h``. Shorthand: ``[x, y, w, h]``."""

    x: int = Field(ge=0, description="left edge in pixels from the picture's left")
    y: int = Field(ge=0, description="top edge in pixels from the picture's top")
    w: int = Field(gt=0, description="width in pixels")
    h: int = Field(gt=0, description="height in pixels")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, list | tuple):
            if len(data) != 4:
                raise ValueError("a rectangle is [x, y, w, h] or {x, y, w, h}")
            return dict(zip(("x", "y", "w", "h"), data, strict=True))
        return data


@dataclass(frozen=True)
class Regions:
    """The seat and the privacy mask in pixels of an actual picture size."""

    width: int
    height: int
    seat: tuple[int, int, int, int]
    privacy_mask: tuple[tuple[int, int], ...] | None


class CameraProfile(ProfileModel):
    """A counter camera: the picture it is asked for, the officer's seat and the citizen-side mask."""

    model: str = Field(pattern=MODEL_ID, description="profile id, e.g. 'usb-640x480'")
    description: str = Field(default="", description="what this profile is for, in a sentence")
    resolution: Resolution = Field(description="the picture size asked of the camera, e.g. 640x480")
    fps: float = Field(
        default=5.0,
        gt=0,
        le=60,
        description="frames per second asked of the camera (USB) or expected from it (IP cameras, files); "
        "5 is plenty for presence and tamper, and keeps decoding cheap on a Pi",
    )
    fourcc: str | None = Field(
        default=None,
        min_length=4,
        max_length=4,
        description="USB cameras: the pixel format to ask for, e.g. MJPG (compressed: USB 2 carries 640x480 at "
        "30 fps only this way) or YUYV; empty: the camera's default",
    )
    seat: Rect = Field(description="the officer's seat, in pixels of resolution: presence is judged inside it")
    privacy_mask: list[tuple[int, int]] | None = Field(
        default=None,
        description="polygon [[x, y], ...] in pixels of resolution, usually the citizen's side of the desk: "
        "black in every picture written, left out of the analytics; empty: no mask",
    )

    @field_validator("privacy_mask")
    @classmethod
    def _polygon(cls, value: list[tuple[int, int]] | None) -> list[tuple[int, int]] | None:
        if value is not None and len(value) < 3:
            raise ValueError("a polygon needs at least 3 points [[x, y], ...]")
        return value

    def scaled(self, width: int, height: int) -> Regions:
        """The seat and mask for a picture of ``width`` x ``height`` (the profile's regions scaled)."""
        sx, sy = width / self.resolution.width, height / self.resolution.height
        s = self.seat
        seat = (round(s.x * sx), round(s.y * sy), max(1, round(s.w * sx)), max(1, round(s.h * sy)))
        mask = None
        if self.privacy_mask is not None:
            mask = tuple((round(x * sx), round(y * sy)) for x, y in self.privacy_mask)
        return Regions(width, height, seat, mask)


def camera_profile_problems(profile: CameraProfile) -> list[tuple[str, str]]:
    """What pydantic cannot see field by field: regions against the frame. ``(key_path, message)`` pairs."""
    found: list[tuple[str, str]] = []
    res, seat = profile.resolution, profile.seat
    frame = f"the {res} frame"
    if seat.x >= res.width:
        found.append(("seat.x", f"{seat.x} is outside {frame}"))
    elif seat.x + seat.w > res.width:
        found.append(("seat.w", f"x + w = {seat.x + seat.w} is outside {frame}"))
    if seat.y >= res.height:
        found.append(("seat.y", f"{seat.y} is outside {frame}"))
    elif seat.y + seat.h > res.height:
        found.append(("seat.h", f"y + h = {seat.y + seat.h} is outside {frame}"))
    if seat.w < MIN_SEAT_PX or seat.h < MIN_SEAT_PX:
        found.append(("seat", f"{seat.w}x{seat.h} is too small to judge presence (at least {MIN_SEAT_PX} px a side)"))
    if profile.privacy_mask is not None:
        for i, (x, y) in enumerate(profile.privacy_mask):
            if not (0 <= x <= res.width and 0 <= y <= res.height):
                found.append((f"privacy_mask[{i}]", f"({x}, {y}) is outside {frame}"))
        if not found:
            hidden = _masked_share(profile)
            if hidden > 0.5:
                found.append(
                    ("privacy_mask", f"covers {hidden:.0%} of the seat: presence needs at least half of it visible")
                )
    return found


def _masked_share(profile: CameraProfile) -> float:
    """The share of the seat rectangle that the privacy mask covers (0..1)."""
    import numpy as np

    from drivers.camera.regions import polygon_mask

    regions = profile.scaled(profile.resolution.width, profile.resolution.height)
    mask = polygon_mask(regions.privacy_mask, regions.width, regions.height)
    if mask is None:
        return 0.0
    x, y, w, h = regions.seat
    return float(np.count_nonzero(mask[y : y + h, x : x + w])) / (w * h)


def parse_camera_profile(data: Any, source: str = "") -> CameraProfile:
    """Validate camera profile data (as loaded from YAML). Raises :exc:`BadProfile` listing every problem."""
    return validate_profile(data, source, CameraProfile, camera_profile_problems)


def load_camera_profile(name_or_path: str | Path) -> CameraProfile:
    """Load and validate a camera profile by name (``firmware_config/cameras/``) or path.

    Raises :exc:`BadProfile` with key-path problems.
    """
    data, source = read_profile_data(name_or_path, camera_profile_dir())
    return parse_camera_profile(data, source=source)


def check_camera(
    profile: str,
    source: int | str | None = None,
    *,
    resources: Resources | None = None,
    holder: str = "camera",
) -> list[tuple[str, str]]:
    """Validate a ``[[camera]]`` section's profile and source without opening anything.

    Returns ``(key_path, message)`` pairs relative to the section (``profile``, ``source``, or a key
    inside the profile such as ``seat.w``); problems inside the profile file name the file. The source's
    device is reserved in ``resources`` (if given) for ``holder``, so two cameras on one device read
    ``camera /dev/video0 is used by camera[0].source``.
    """
    _, found = section_profile(load_camera_profile, profile)
    if source is not None:
        from drivers.camera.source import parse_source

        try:
            parsed = parse_source(source)
        except ValueError as exc:
            found.append(("source", str(exc)))
        else:
            if resources is not None and parsed.resource is not None:
                try:
                    resources.reserve("camera", parsed.resource, holder)
                except ResourceBusy as exc:
                    found.append(("source", str(exc)))
    return found
