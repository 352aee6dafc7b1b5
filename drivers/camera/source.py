"""Where a camera's pictures come from: a USB index, a V4L2 device path, a stream URL or a file.

:func:`parse_source` turns the configured ``source`` into a :class:`CameraSource` that says how to
open it, under which name it is reserved (kind ``camera`` in :mod:`drivers.resources`) and how to
name it in logs and events without the password an IP camera's URL may carry.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

SourceKind = Literal["usb", "v4l2", "url", "file"]

STREAM_SCHEMES = ("rtsp", "rtsps", "http", "https")


@dataclass(frozen=True)
class CameraSource:
    """A parsed camera source."""

    kind: SourceKind
    #: What OpenCV opens: an index, a device path, a URL or a file path.
    target: int | str
    #: The name reserved in the resource registry (None for files: any number of readers may read one).
    resource: str | None
    #: How the source is named in logs and events (a URL without its user and password).
    display: str

    @property
    def live(self) -> bool:
        """Whether the source is a camera (a device or a stream), not a recording."""
        return self.kind != "file"


def redact_url(url: str) -> str:
    """``rtsp://admin:secret@10.0.0.5/stream`` → ``rtsp://10.0.0.5/stream``."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]  # not .port: a bad port must not hide the URL in its own error
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def parse_source(source: int | str) -> CameraSource:
    """Parse a configured source. Raises ``ValueError`` for one that cannot name a camera.

    ``0`` (or ``"0"``) is the first USB camera, ``/dev/video0`` or ``/dev/v4l/by-id/...`` a V4L2 device
    (reserved under the device it links to, so an index and a path to one camera clash),
    ``rtsp://``/``http(s)://`` an IP camera's stream, anything else a video file.
    """
    if isinstance(source, bool):
        raise ValueError("a camera source is a USB index, a /dev/video path, a stream URL or a file path")
    if isinstance(source, int) or (isinstance(source, str) and source.strip().isdigit()):
        index = int(source)
        if not 0 <= index <= 63:
            raise ValueError(f"USB camera index {index} is out of range (0-63)")
        return CameraSource("usb", index, f"/dev/video{index}", f"/dev/video{index}")
    text = source.strip()
    if not text:
        raise ValueError("a camera source cannot be empty")
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if scheme:
        if scheme not in STREAM_SCHEMES:
            schemes = ", ".join(s + "://" for s in STREAM_SCHEMES)
            raise ValueError(f"unsupported stream scheme {scheme}:// (use {schemes})")
        parts = urlsplit(text)
        if not parts.hostname:
            raise ValueError(f"stream URL has no host: {redact_url(text)!r}")
        try:
            _ = parts.port
        except ValueError:
            raise ValueError(f"stream URL has a bad port: {redact_url(text)!r}") from None
        display = redact_url(text)
        return CameraSource("url", text, display, display)
    if text.startswith("/dev/"):
        device = os.path.realpath(text) if os.path.exists(text) else text
        return CameraSource("v4l2", text, device, text)
    return CameraSource("file", os.path.expanduser(text), None, text)
