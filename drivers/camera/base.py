"""The camera device: one reader thread over a backend, keeping only the newest frame.

:class:`Camera` is to a camera what gpiozero's devices are to pins: it never talks to hardware itself,
it asks its backend (:class:`CameraBackend`) for the next picture. The backend that ships is OpenCV's
(:mod:`drivers.camera.opencv`: USB, V4L2, RTSP/HTTP, files); the simulator serves generated video to
that same backend, so tests exercise the real capture path.

The reader thread reads as fast as the source delivers, so a network stream never backs up in a
socket buffer, and keeps only the newest frame: :meth:`Camera.latest` never blocks, and a frame
replaced before anyone took it is counted as a drop (Frigate's capture loop does the same rather
than fall behind). Every decoded frame is also handed to the subscribers, on the reader thread.

When the source fails (a read times out, the stream ends, the device vanishes), the thread closes it
and opens it again with a backoff doubling from ``retry_min_s`` to ``retry_max_s``, with jitter
(:class:`edge.retry.Backoff`); the state is ``lost`` from the failure (or from ``lost_after_s``
without a frame, while a read is still waiting) until frames flow again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from drivers.resources import Resources
from edge.exceptions import HardwareError
from edge.retry import Backoff

log = logging.getLogger(__name__)

CameraState = Literal["connecting", "streaming", "lost"]

#: How long close() waits for the reader thread (a backend read is bounded by its own timeout).
JOIN_S = 15.0
#: The window over which the frame rate is measured.
FPS_WINDOW_S = 5.0


class CameraUnavailable(HardwareError):
    """A camera that cannot be opened or read: no such device, an unreachable URL, not a video."""


@dataclass(frozen=True)
class Frame:
    """One decoded picture."""

    seq: int
    """Counts the camera's frames from 1 (across reconnections)."""
    ts: float
    """Wall-clock time it was read (``time.time()``)."""
    mono: float
    """Monotonic time it was read (``time.monotonic()``): for intervals and rates."""
    image: np.ndarray
    """BGR, uint8, height x width x 3. Shared with every consumer: never modify it in place."""


@dataclass(frozen=True)
class CameraStats:
    """A snapshot of the camera's counters."""

    frames: int
    """Frames decoded since start."""
    drops: int
    """Frames replaced by a newer one before anyone took them with latest(), plus frames a recording
    skipped to keep real time."""
    reconnects: int
    """Times the source was opened again after it was lost."""
    fps: float
    """Measured frame rate over the last few seconds (0 when no frames come)."""
    state: CameraState
    error: str | None
    """Why the camera is not streaming (the last open or read failure), None while it streams."""
    width: int | None
    height: int | None


class CameraBackend(Protocol):
    """What a camera device needs from the thing that decodes pictures."""

    #: How the source is named in logs and events (no passwords).
    description: str
    #: Frames the backend skipped on its own (a recording catching up with real time).
    skipped: int

    def open(self) -> None:
        """Open the source. Raises :exc:`CameraUnavailable` with a reason a technician can act on.
        Returns within the backend's open timeout."""

    def read(self) -> np.ndarray | None:
        """The next picture (BGR uint8), or None when the stream is lost (then the camera reopens).
        Returns within the backend's read timeout. May raise :exc:`CameraUnavailable` with the reason."""

    def close(self) -> None:
        """Release the source. Idempotent."""


FrameCallback = Callable[[Frame], None]


class Camera:
    """One camera: a reader thread over ``backend``. ``start()`` starts reading, ``close()`` stops and
    releases the device (idempotent; also a context manager)."""

    def __init__(
        self,
        name: str,
        backend: CameraBackend,
        *,
        resources: Resources | None = None,
        resource: str | None = None,
        holder: str | None = None,
        lost_after_s: float = 2.0,
        retry_min_s: float = 0.5,
        retry_max_s: float = 30.0,
    ) -> None:
        self.name = name
        self.backend = backend
        self._resources = resources
        self._resource = resource
        self._holder = holder or f"camera.{name}"
        self.lost_after_s = lost_after_s
        self.retry_min_s = retry_min_s
        self.retry_max_s = retry_max_s
        self._lock = threading.Lock()
        self._subscribers: list[FrameCallback] = []
        self._latest: Frame | None = None
        self._taken = True
        self._seq = 0
        self._drops = 0
        self._reconnects = 0
        self._state: CameraState = "connecting"
        self._error: str | None = None
        self._arrivals: deque[float] = deque()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the reader thread (it opens the source, and keeps reopening it when lost)."""
        if self._closed:
            raise CameraUnavailable(f"camera {self.name} is closed")
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"camera-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop reading and release the source; the device stays reserved (``start()`` again works)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(JOIN_S)
            if thread.is_alive():
                # A backend ignoring its timeouts (a hung driver): releasing the capture under a
                # read in progress would crash OpenCV, so the thread is left to finish on its own.
                log.warning("camera %s: the reader did not stop within %.0f s", self.name, JOIN_S)
                return
        self._thread = None
        self.backend.close()

    def close(self) -> None:
        """Stop, and release the device's reservation. Idempotent."""
        if self._closed:
            return
        self.stop()
        self._closed = True
        if self._resources is not None and self._resource is not None:
            self._resources.release("camera", self._resource, self._holder)

    def __enter__(self) -> Camera:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- consumers ---------------------------------------------------------------------------------

    def latest(self) -> Frame | None:
        """The newest frame, or None before the first. Never blocks."""
        with self._lock:
            self._taken = True
            return self._latest

    def subscribe(self, callback: FrameCallback) -> None:
        """Call ``callback(frame)`` for every decoded frame, on the reader thread: keep it cheap (hand
        the frame to a thread of your own for anything slow). An exception in it is logged, not raised."""
        with self._lock:
            self._subscribers.append(callback)

    def unsubscribe(self, callback: FrameCallback) -> None:
        with self._lock:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

    @property
    def reader_thread(self) -> threading.Thread | None:
        """The reader thread (it reopens a lost source itself), from :meth:`start` until :meth:`stop`."""
        return self._thread

    @property
    def state(self) -> CameraState:
        with self._lock:
            return self._current_state(time.monotonic())

    @property
    def stats(self) -> CameraStats:
        now = time.monotonic()
        with self._lock:
            latest = self._latest
            return CameraStats(
                frames=self._seq,
                drops=self._drops + self.backend.skipped,
                reconnects=self._reconnects,
                fps=self._fps(now),
                state=self._current_state(now),
                error=self._error,
                width=None if latest is None else int(latest.image.shape[1]),
                height=None if latest is None else int(latest.image.shape[0]),
            )

    def _current_state(self, now: float) -> CameraState:
        if self._state == "streaming" and self._latest is not None and now - self._latest.mono > self.lost_after_s:
            return "lost"
        return self._state

    def _fps(self, now: float) -> float:
        arrivals = self._arrivals
        while arrivals and now - arrivals[0] > FPS_WINDOW_S:
            arrivals.popleft()
        if len(arrivals) < 2:
            return 0.0
        span = max(arrivals[-1] - arrivals[0], now - arrivals[-1])
        return round((len(arrivals) - 1) / span, 2) if span > 0 else 0.0

    # -- the reader thread -------------------------------------------------------------------------

    def _run(self) -> None:
        backoff = Backoff(self.retry_min_s, self.retry_max_s)
        ever_streamed = False
        while not self._stop.is_set():
            try:
                self.backend.open()
            except CameraUnavailable as exc:
                self._failed(str(exc), ever_streamed)
                self._stop.wait(backoff.next())
                continue
            except Exception as exc:  # an OpenCV error must not end the thread: the camera may come back
                log.exception("camera %s: opening %s failed", self.name, self.backend.description)
                self._failed(f"cannot open {self.backend.description}: {exc}", ever_streamed)
                self._stop.wait(backoff.next())
                continue
            reason = f"{self.backend.description}: the stream stopped"
            got = 0
            while not self._stop.is_set():
                try:
                    image = self.backend.read()
                except CameraUnavailable as exc:
                    reason, image = str(exc), None
                except Exception as exc:
                    log.exception("camera %s: reading %s failed", self.name, self.backend.description)
                    reason, image = f"{self.backend.description}: {exc}", None
                if image is None:
                    break
                if got == 0:
                    if ever_streamed:
                        with self._lock:
                            self._reconnects += 1
                    log.info("camera %s: streaming from %s", self.name, self.backend.description)
                got += 1
                ever_streamed = True
                backoff.reset()
                self._publish(image)
            self.backend.close()
            if self._stop.is_set():
                break
            self._failed(reason, ever_streamed)
            self._stop.wait(backoff.next())

    def _failed(self, reason: str, ever_streamed: bool) -> None:
        with self._lock:
            changed = reason != self._error
            self._error = reason
            self._state = "lost" if ever_streamed else "connecting"
        if changed:
            log.warning("camera %s: %s", self.name, reason)

    def _publish(self, image: np.ndarray) -> None:
        now = time.monotonic()
        with self._lock:
            self._seq += 1
            frame = Frame(self._seq, time.time(), now, image)
            if not self._taken:
                self._drops += 1
            self._latest = frame
            self._taken = False
            self._state = "streaming"
            self._error = None
            self._arrivals.append(now)
            subscribers = list(self._subscribers)
        for callback in subscribers:
            try:
                callback(frame)
            except Exception:
                log.exception("camera %s: a frame subscriber failed", self.name)
