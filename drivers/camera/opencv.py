"""The OpenCV backend: ``cv2.VideoCapture`` on a USB camera, a V4L2 device, an RTSP/HTTP stream or a file.

- USB index and ``/dev/video*`` paths open with V4L2 and are asked for the profile's resolution, frame
  rate and pixel format (a camera may deliver something else; the device scales the regions).
- Stream URLs open with FFmpeg. FFmpeg can wait forever on a dead stream (a camera that accepted the
  connection and then went quiet), so every open and every read is bounded by ``timeout_s``
  (``CAP_PROP_OPEN_TIMEOUT_MSEC``, ``CAP_PROP_READ_TIMEOUT_MSEC``). RTSP goes over TCP: over a lossy
  link UDP loses packets and the picture breaks up. Before its first picture FFmpeg measures a
  stream's frame rate over 20 frames: 4 s of H.264 at the profiles' 5 fps (over RTSP, or in MPEG-TS),
  longer than a short ``timeout_s``, and those frames then come at once, seconds old. The driver
  measures the rate itself, so FFmpeg is asked for 3 frames, which still read an MPEG-TS recording's
  rate right (with none it reads the field rate, twice the truth); an H.264 stream opens in about 2 s.
- Files open with FFmpeg and are played as a camera would deliver them: paced in real time at the
  file's frame rate, looping at the end (frames the reader is too late for are skipped and counted).

``cv2`` is imported when a camera is opened, never at import: a loudspeaker never loads it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import time
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from drivers.camera.base import CameraUnavailable
from drivers.camera.profile import CameraProfile
from drivers.camera.source import CameraSource

log = logging.getLogger(__name__)

#: Default ports by scheme, for the reachability check that names why a stream cannot be opened.
_DEFAULT_PORTS = {"rtsp": 554, "rtsps": 322, "http": 80, "https": 443}
#: A recording's frame rate is believed only inside this range (some containers say 1000 or 0).
_PLAUSIBLE_FPS = (0.5, 120.0)

#: Up to this frame rate (the profile's) a stream is decoded in the reader's own thread. FFmpeg otherwise
#: starts a decoder thread per core to decode frames side by side, each holding frames of its own (for
#: H.264 at 640x480, 2 MB more on two cores; more on a Pi's four), which buys nothing at the 5 fps the
#: shipped profiles ask for: one thread has 200 ms for each frame.
ONE_DECODER_THREAD_FPS = 10.0

#: Read by OpenCV's FFmpeg backend when a capture opens (``key;value`` pairs joined by ``|``): RTSP over
#: TCP, and FFmpeg's frame-rate probe cut to 3 frames (see the module docstring). An
#: ``OPENCV_FFMPEG_CAPTURE_OPTIONS`` already in the environment is left as it is.
FFMPEG_CAPTURE_OPTIONS = "rtsp_transport;tcp|fpsprobesize;3"

_cv2_module: Any = None


def cv2_module() -> Any:
    """``cv2``, imported on first use with OpenCV's own warnings turned down to errors (a timed-out
    read is reported by the camera, once, rather than by OpenCV on every retry)."""
    global _cv2_module
    if _cv2_module is None:
        os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", FFMPEG_CAPTURE_OPTIONS)
        import cv2

        with contextlib.suppress(AttributeError):  # builds without the logging utilities
            cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
        _cv2_module = cv2
    return _cv2_module


class OpenCvBackend:
    """Frames from ``source`` through ``cv2.VideoCapture`` (see the module docstring)."""

    def __init__(self, source: CameraSource, profile: CameraProfile, *, timeout_s: float = 5.0) -> None:
        self.source = source
        self.profile = profile
        self.timeout_s = timeout_s
        self.description = source.display
        self.skipped = 0
        self._cap: Any = None
        self._fps = profile.fps
        self._started = 0.0
        self._index = 0
        self._since_open = 0

    # -- open --------------------------------------------------------------------------------------

    def open(self) -> None:
        self.close()
        cv2 = cv2_module()
        kind, target = self.source.kind, self.source.target
        if kind in ("usb", "v4l2"):
            cap = self._open_device(cv2)
        elif kind == "url":
            ms = int(self.timeout_s * 1000)
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
            cap = cv2.VideoCapture(target, cv2.CAP_FFMPEG, params + self._decoder_params(cv2))
            if not cap.isOpened():
                cap.release()
                raise CameraUnavailable(f"{self.description}: {self._why_stream_failed()}")
        else:
            path = str(target)
            if not os.path.exists(path):
                raise CameraUnavailable(f"{self.description}: no such file")
            if not os.access(path, os.R_OK):
                raise CameraUnavailable(f"{self.description}: permission denied")
            cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG, self._decoder_params(cv2))
            if not cap.isOpened():
                cap.release()
                raise CameraUnavailable(f"{self.description}: not a video file OpenCV can read")
            fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
            self._fps = fps if _PLAUSIBLE_FPS[0] <= fps <= _PLAUSIBLE_FPS[1] else self.profile.fps
        self._cap = cap
        self._started = time.monotonic()
        self._index = 0
        self._since_open = 0

    def _decoder_params(self, cv2: Any) -> list[int]:
        """FFmpeg's decoder threads: one for a camera at analysis rates (see :data:`ONE_DECODER_THREAD_FPS`)."""
        if self.profile.fps > ONE_DECODER_THREAD_FPS or not hasattr(cv2, "CAP_PROP_N_THREADS"):
            return []  # FFmpeg's own choice, a thread or more per core
        return [cv2.CAP_PROP_N_THREADS, 1]

    def _open_device(self, cv2: Any) -> Any:
        device = self.source.resource or str(self.source.target)
        if not os.path.exists(device):
            raise CameraUnavailable(f"{self.description}: no such device (is the camera plugged in?)")
        if not os.access(device, os.R_OK | os.W_OK):
            raise CameraUnavailable(f"{self.description}: permission denied (the service user needs the video group)")
        res = self.profile.resolution
        params = [cv2.CAP_PROP_FRAME_WIDTH, res.width, cv2.CAP_PROP_FRAME_HEIGHT, res.height]
        if self.profile.fourcc:
            params += [cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*self.profile.fourcc)]
        cap = cv2.VideoCapture(self.source.target, cv2.CAP_V4L2, params)
        if not cap.isOpened():
            cap.release()
            raise CameraUnavailable(f"{self.description}: the device does not open as a V4L2 video capture device")
        cap.set(cv2.CAP_PROP_FPS, self.profile.fps)
        # The driver waits for a frame this long before giving up (where the backend supports it).
        cap.set(cv2.CAP_PROP_READ_TIMEOUT_MSEC, self.timeout_s * 1000)
        return cap

    def _why_stream_failed(self) -> str:
        """Why a stream did not open: unreachable (refused, timed out, no such host) or not a video."""
        parts = urlsplit(str(self.source.target))
        host = parts.hostname or ""
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme, 80)
        try:
            with socket.create_connection((host, port), timeout=min(self.timeout_s, 5.0)):
                pass
        except socket.gaierror:
            return f"unknown host {host}"
        except TimeoutError:
            return f"unreachable: no answer from {host}:{port} within {min(self.timeout_s, 5.0):g} s"
        except OSError as exc:
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            if exc.errno == errno.ECONNREFUSED:
                reason = "connection refused"
            return f"unreachable: {reason} ({host}:{port})"
        return f"not a video stream OpenCV can read, or no picture within {self.timeout_s:g} s"

    # -- read --------------------------------------------------------------------------------------

    def read(self) -> np.ndarray | None:
        cap = self._cap
        if cap is None:
            return None
        if self.source.kind == "file":
            return self._read_file()
        ok, image = cap.read()
        if not ok or image is None or image.size == 0:
            raise CameraUnavailable(f"{self.description}: no picture within {self.timeout_s:g} s, or the stream ended")
        return _as_bgr(image)

    def _read_file(self) -> np.ndarray | None:
        """The next frame of a recording, when a camera would deliver it (real time, looping)."""
        cv2 = cv2_module()
        period = 1.0 / self._fps
        due = self._started + self._index * period
        wait = due - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        else:
            # Late by more than a frame: skip what a live camera would have delivered meanwhile.
            behind = int(-wait / period)
            for _ in range(behind):
                if not self._cap.grab():
                    break
                self._index += 1
                self.skipped += 1
        ok, image = self._cap.read()
        if not ok or image is None or image.size == 0:
            if self._since_open == 0:
                raise CameraUnavailable(f"{self.description}: no frame could be decoded (damaged or not a video)")
            # The end of the recording: start it again, as a camera that never stops.
            self._cap.release()
            self._cap = cv2.VideoCapture(str(self.source.target), cv2.CAP_FFMPEG, self._decoder_params(cv2))
            self._since_open = 0
            self._started, self._index = time.monotonic(), 0
            ok, image = self._cap.read()
            if not ok or image is None or image.size == 0:
                raise CameraUnavailable(f"{self.description}: no frame could be decoded after rewinding")
        self._index += 1
        self._since_open += 1
        return _as_bgr(image)

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


def _as_bgr(image: np.ndarray) -> np.ndarray:
    """Grey or BGRA pictures (some USB cameras) as the BGR the contract promises."""
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.shape[2] == 4:
        return np.ascontiguousarray(image[:, :, :3])
    return image
