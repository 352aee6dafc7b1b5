"""The simulated camera of ``edge sim``: the counter scene drawn live and served on loopback.

:mod:`sim.camera_scene` draws a counter from a timeline written in advance. Here the timeline is
written as things happen: each action a person or a scenario asks for (``seat``, ``cover``, ...) is
added to the scene's timeline at the present moment, frames are drawn in real time at the profile's
frame rate, and a server takes them raw on its standard input, encodes them and serves them on
loopback, as an IP camera serves its stream: ffmpeg (Debian's) over HTTP (MJPEG, or H.264 in MPEG-TS),
or GStreamer's RTSP server (:mod:`sim.rtsp_server`: H.264 over RTP, as most IP cameras). The camera
service reads that URL through the real OpenCV driver, so what it sees went through a real encoder, a
real socket and a real decoder.

``stop_stream`` kills the server and closes the port (a camera switched off, its cable pulled);
``start_stream`` serves again. Nothing in the scene pauses meanwhile: the officer who sat down while
the stream was off is seated when it comes back.

::

    camera = SimCamera("sim-counter-640x480", work_dir=Path("/tmp/cam")).start()
    camera.url                      # http://127.0.0.1:PORT/camera.mjpg (fmt="rtsp": rtsp://127.0.0.1:PORT/camera)
    camera.act("seat")              # the officer walks in now
    camera.stop_stream(); camera.start_stream()
    camera.close()
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import threading
import time
from pathlib import Path
from typing import IO, Any

import numpy as np

from drivers.camera.profile import load_camera_profile
from sim import rtsp_server
from sim.broker import free_port
from sim.camera_scene import SCENE_PROFILE, CounterScene, _listening, find_ffmpeg

log = logging.getLogger(__name__)

#: The scene actions a live camera takes, and the parameters each accepts (sim/camera_scene.py says
#: what they do). Passers-by come by themselves, every 15 s or so.
SCENE_ACTIONS: dict[str, frozenset[str]] = {
    "seat": frozenset(),
    "leave": frozenset(),
    "still": frozenset(),
    "work": frozenset(),
    "cover": frozenset({"level"}),
    "uncover": frozenset(),
    "blur": frozenset({"sigma"}),
    "unblur": frozenset(),
    "shift": frozenset({"dx", "dy"}),
    "unshift": frozenset(),
    "freeze": frozenset(),
    "unfreeze": frozenset(),
    "light": frozenset({"factor", "left", "right", "ramp_s"}),
}
#: How the stream is served, by its name in ``fmt``: by ffmpeg over HTTP, or by GStreamer over RTSP.
FORMAT_NAMES = {"mjpeg": "MJPEG over HTTP", "mpegts": "H.264 in MPEG-TS over HTTP", "rtsp": "H.264 over RTSP"}
STREAM_FORMATS = tuple(FORMAT_NAMES)
#: The scene's passers-by are scheduled ahead for this long (a day at the counter).
SCENE_HOURS = 24.0
#: Seconds between passers-by, on average (the scene draws each gap between 0.6 and 1.4 times it).
WALKERS_EVERY_S = 15.0
#: How long the server may take to listen after it was started. ffmpeg's first start on a fresh
#: machine loads its libraries from a cold disk cache, which took more than 15 s once on a loaded
#: 2-core machine (GStreamer's first start also builds its plugin registry).
LISTEN_TIMEOUT_S = 45.0


def stream_url(port: int, fmt: str) -> str:
    """Where a simulated camera on ``port`` serves its stream in format ``fmt``."""
    if fmt == "rtsp":
        return f"rtsp://127.0.0.1:{port}{rtsp_server.PATH}"
    name = "camera.mjpg" if fmt == "mjpeg" else "camera.ts"
    return f"http://127.0.0.1:{port}/{name}"


class SimCamera:
    """A live counter scene for one camera, served as a stream (see :data:`FORMAT_NAMES`). ``start()``,
    then ``close()``.

    ``profile`` places the seat and the privacy mask (and sets the resolution and frame rate), as the
    camera's own profile does for a real camera. Thread-safe: actions arrive from the control socket
    while the drawing thread draws.
    """

    def __init__(
        self,
        profile: str = SCENE_PROFILE,
        *,
        work_dir: Path,
        fmt: str = "mjpeg",
        port: int = 0,
        name: str = "camera",
        walkers_every_s: float | None = WALKERS_EVERY_S,
    ) -> None:
        if fmt not in STREAM_FORMATS:
            raise ValueError(f"stream format is one of {', '.join(STREAM_FORMATS)}, got {fmt!r}")
        self.name = name
        self.fmt = fmt
        self.port = port or free_port()
        self.log_path = work_dir / f"scene-{name}-{'rtsp' if fmt == 'rtsp' else 'ffmpeg'}.log"
        loaded = load_camera_profile(profile)
        self.fps = float(loaded.fps)
        self.scene = CounterScene(
            [], duration_s=SCENE_HOURS * 3600, fps=self.fps, walkers_every_s=walkers_every_s, profile=loaded
        )
        #: The actions taken, as ``(scene seconds, action, params)``.
        self.actions: list[tuple[float, str, dict[str, Any]]] = []
        self.sessions = 0
        self._lock = threading.Lock()  # the scene's timeline: appended by actions, read by the drawing
        self._frame = threading.Condition()
        self._latest: tuple[int, bytes] | None = None
        self._t0 = 0.0
        self._closing = threading.Event()
        self._serving = threading.Event()
        self._proc: subprocess.Popen[bytes] | None = None
        self._proc_lock = threading.Lock()
        self._drawer: threading.Thread | None = None
        self._server: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The stream's URL: what the camera's ``source`` is set to."""
        return stream_url(self.port, self.fmt)

    @property
    def streaming(self) -> bool:
        """Whether the stream is being served (not stopped with :meth:`stop_stream`)."""
        return self._serving.is_set()

    def now(self) -> float:
        """Seconds since the scene started."""
        return time.monotonic() - self._t0

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> SimCamera:
        """Start drawing, and serving; returns once the server listens."""
        if self.fmt == "rtsp":
            why = rtsp_server.unavailable()
            if why is not None:
                raise RuntimeError(f"the RTSP server cannot run: {why}")
        elif find_ffmpeg() is None:
            raise RuntimeError("ffmpeg is not installed (Debian: apt-get install ffmpeg)")
        self._t0 = time.monotonic()
        self._drawer = threading.Thread(target=self._draw_loop, name=f"scene-draw-{self.name}", daemon=True)
        self._drawer.start()
        self.start_stream()
        return self

    def close(self) -> None:
        """Stop serving and drawing. Idempotent."""
        self._closing.set()
        self.stop_stream()
        with self._frame:
            self._frame.notify_all()
        if self._drawer is not None:
            self._drawer.join(5)
            self._drawer = None

    def __enter__(self) -> SimCamera:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what happens in front of the camera -------------------------------------------------------

    def act(self, action: str, params: dict[str, Any] | None = None) -> float:
        """Add ``action`` to the scene now; returns the scene time it happens at. Raises ``ValueError``
        for an unknown action or parameter."""
        params = dict(params or {})
        if action not in SCENE_ACTIONS:
            raise ValueError(f"unknown scene action {action!r} (known: {', '.join(SCENE_ACTIONS)})")
        unknown = sorted(set(params) - SCENE_ACTIONS[action])
        if unknown:
            takes = ", ".join(sorted(SCENE_ACTIONS[action])) or "no parameters"
            raise ValueError(f"{action} takes {takes}; not {', '.join(unknown)}")
        for key, value in params.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{action}: {key} must be a number, got {value!r}")
        with self._lock:
            t = self.now()
            # Appended in time order, so the timeline stays sorted as CounterScene reads it.
            self.scene.timeline.append((t, action, params))
            self.actions.append((t, action, params))
        log.info("scene %s: %s %s at %.2f s", self.name, action, params, t)
        return t

    def officer_seated(self) -> bool:
        """Ground truth: whether the officer is in the seat now."""
        with self._lock:
            return self.scene.officer_seated(self.now())

    # -- drawing -----------------------------------------------------------------------------------

    def _draw_loop(self) -> None:
        period = 1.0 / self.fps
        index = 0
        while not self._closing.is_set():
            with self._lock:
                image = self.scene.frame(index)
            self._publish(index, image)
            index += 1
            due = self._t0 + index * period
            late = time.monotonic() - due
            if late > period:
                index += int(late / period)  # a loaded machine: drop frames, as a camera does, never lag
                due = self._t0 + index * period
            self._closing.wait(max(0.0, due - time.monotonic()))

    def _publish(self, index: int, image: np.ndarray) -> None:
        with self._frame:
            self._latest = (index, np.ascontiguousarray(image).tobytes())
            self._frame.notify_all()

    # -- serving -----------------------------------------------------------------------------------

    def start_stream(self) -> None:
        """Serve the stream (again); returns once the server listens."""
        if self._closing.is_set() or self._serving.is_set():
            return
        self._serving.set()
        self._server = threading.Thread(target=self._serve_loop, name=f"scene-serve-{self.name}", daemon=True)
        self._server.start()
        deadline = time.monotonic() + LISTEN_TIMEOUT_S
        while not _listening(self.port):
            if time.monotonic() > deadline:
                server = "the RTSP server" if self.fmt == "rtsp" else "ffmpeg"
                raise RuntimeError(f"{server} did not listen on port {self.port} within {LISTEN_TIMEOUT_S:g} s")
            time.sleep(0.05)

    def stop_stream(self) -> None:
        """Stop serving: the client's connection is cut and the port closed. Idempotent."""
        self._serving.clear()
        self._kill()
        with self._frame:
            self._frame.notify_all()  # a pump waiting for the next frame
        if self._server is not None:
            self._server.join(5)
            self._server = None

    def _command(self) -> list[str]:
        width, height = self.scene.width, self.scene.height
        if self.fmt == "rtsp":
            return rtsp_server.server_command(self.port, width, height, self.fps)
        ffmpeg = find_ffmpeg()
        assert ffmpeg is not None
        head = [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error"]
        head += ["-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{width}x{height}", "-framerate", f"{self.fps:g}"]
        head += ["-i", "pipe:0"]
        if self.fmt == "mjpeg":
            return [*head, "-c:v", "mjpeg", "-q:v", "3", "-f", "mpjpeg", "-listen", "1", self.url]
        codec = ["-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-g", "10", "-pix_fmt", "yuv420p"]
        # Sent as it is made: the muxer would otherwise hold 32 KiB, seconds of a 5 fps stream.
        flush = ["-flush_packets", "1", "-muxdelay", "0"]
        return [*head, *codec, *flush, "-f", "mpegts", "-listen", "1", self.url]

    def _serve_loop(self) -> None:
        # ffmpeg's HTTP server takes one client and ends when it leaves: started again for the next.
        # The RTSP server serves every client until it is killed (or dies: started again too).
        with open(self.log_path, "ab") as logfile:
            while self._serving.is_set() and not self._closing.is_set():
                with self._proc_lock:
                    if not self._serving.is_set():
                        break
                    command = self._command()
                    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=logfile)
                    self._proc = proc
                    self.sessions += 1
                assert proc.stdin is not None
                self._pump(proc.stdin)
                with contextlib.suppress(OSError):
                    proc.stdin.close()
                proc.kill()
                proc.wait()
                if self._serving.is_set():
                    self._closing.wait(0.1)  # a client came and went: listen again, without spinning

    def _pump(self, stdin: IO[bytes]) -> None:
        """Write each new frame to the server until it goes. While ffmpeg waits for a client the write
        blocks; the frames drawn meanwhile are dropped, so the client gets the present, not a backlog
        (the RTSP server reads every frame and drops those nobody watches)."""
        sent = -1

        def news() -> bool:
            return not self._serving.is_set() or (self._latest is not None and self._latest[0] > sent)

        while self._serving.is_set() and not self._closing.is_set():
            with self._frame:
                self._frame.wait_for(news, 1.0)
                latest = self._latest
            if latest is None or latest[0] <= sent:
                continue
            sent = latest[0]
            try:
                stdin.write(latest[1])
                stdin.flush()
            except (BrokenPipeError, ValueError, OSError):
                return  # the client left (ffmpeg ended), or the stream was stopped

    def _kill(self) -> None:
        with self._proc_lock:
            proc = self._proc
            if proc is not None and proc.poll() is None:
                proc.kill()
