"""Counter cameras: one :class:`Camera` device (a reader thread keeping the newest frame) over a backend.

:func:`open_camera` builds a camera from a ``[[camera]]`` section: it loads the profile, parses the
source, reserves the device (kind ``camera`` in :mod:`drivers.resources`) and picks the OpenCV
backend (:mod:`drivers.camera.opencv`). The simulator serves generated video to that same backend
(:mod:`sim.camera_scene`), never an ``if simulated:`` inside a driver.

Modules: :mod:`~drivers.camera.base` (device, frames, stats), :mod:`~drivers.camera.opencv`
(backend), :mod:`~drivers.camera.profile` (``firmware_config/cameras/*.yaml``),
:mod:`~drivers.camera.source` (what a source string means), :mod:`~drivers.camera.regions` (masks).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from drivers.camera.base import Camera, CameraBackend, CameraState, CameraStats, CameraUnavailable, Frame
from drivers.camera.profile import (
    CameraProfile,
    Regions,
    check_camera,
    list_camera_profiles,
    load_camera_profile,
)
from drivers.camera.source import CameraSource, parse_source
from drivers.resources import Resources, process_resources

if TYPE_CHECKING:
    from edge.config.camera import CameraConfig

__all__ = [
    "Camera",
    "CameraBackend",
    "CameraProfile",
    "CameraSource",
    "CameraState",
    "CameraStats",
    "CameraUnavailable",
    "Frame",
    "Regions",
    "check_camera",
    "list_camera_profiles",
    "load_camera_profile",
    "open_camera",
    "parse_source",
]


def open_camera(settings: CameraConfig, *, resources: Resources | None = None) -> Camera:
    """The camera a ``[[camera]]`` section describes, not yet started (``start()`` opens the source).

    The device is reserved in ``resources`` (the process registry if None) under ``camera.<name>``
    and released by ``close()``. Raises :exc:`~edge.exceptions.BadProfile` for a profile that cannot be
    used, :exc:`~edge.exceptions.ResourceBusy` when another holder has the device.
    """
    from drivers.camera.opencv import OpenCvBackend

    profile = load_camera_profile(settings.profile)
    source = parse_source(settings.source)
    registry = resources if resources is not None else process_resources()
    holder = f"camera.{settings.name}"
    if source.resource is not None:
        registry.reserve("camera", source.resource, holder)
    backend = OpenCvBackend(source, profile, timeout_s=settings.timeout_s)
    return Camera(
        settings.name,
        backend,
        resources=registry,
        resource=source.resource,
        holder=holder,
        lost_after_s=settings.tamper_frames / settings.analytics_fps,
        retry_max_s=settings.retry_max_s,
    )
