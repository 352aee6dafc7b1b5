"""An RTSP server for the simulated counter scene: raw frames on standard input, H.264 over RTP out.

IP cameras serve RTSP, and ffmpeg cannot serve RTSP to a client that pulls it, so the scene is served
by GStreamer's gst-rtsp-server (Debian's ``gir1.2-gst-rtsp-server-1.0``) through PyGObject
(``python3-gi``). PyGObject is Debian's, built for Debian's Python, so this file runs as a child
process under ``/usr/bin/python3``; at the top it imports the standard library only, so the project's
own Python can import it for :func:`server_command` and :func:`unavailable` without loading GStreamer.

Whoever starts it writes the scene's frames to its standard input, raw BGR (``--size`` and ``--fps``),
in real time: :class:`~sim.counter_camera.SimCamera` as it draws them, or ffmpeg decoding a recorded
scene (:class:`~sim.camera_scene.SceneServer`). Every client shares one pipeline that encodes them::

    appsrc (live, timestamped on arrival) ! videoconvert ! x264enc (zerolatency) ! rtph264pay

as an IP camera does: H.264 over RTP, a key frame every two seconds, and the parameter sets (SPS,
PPS) before each key frame so a client that joins mid-stream decodes from its first key frame.
Frames that arrive while nobody watches are dropped: a client gets the present, not a backlog. The
server ends when its standard input does (whoever fed it is gone), or on SIGTERM/SIGINT.

By hand, a recorded scene (``python -m sim.camera_scene --serve --fmt rtsp`` does the same)::

    ffmpeg -re -stream_loop -1 -i scene.avi -f rawvideo -pix_fmt bgr24 - \\
        | /usr/bin/python3 sim/rtsp_server.py --port 8554 --path /camera --size 640x480 --fps 5
    ffplay rtsp://127.0.0.1:8554/camera

``--check`` says whether the GStreamer parts it needs are installed (exit 0) or which are missing.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
from functools import cache
from pathlib import Path
from typing import Any

#: The Python the server runs under: Debian's, which PyGObject (python3-gi) is built for.
SYSTEM_PYTHON = "/usr/bin/python3"
SCRIPT = Path(__file__).resolve()
#: The Debian packages the server needs: the bindings, the server library, and the elements it links
#: (appsrc and videoconvert in -base, the RTP payloader and the RTP session manager in -good, the
#: x264 encoder in -ugly).
PACKAGES = (
    "python3-gi",
    "gir1.2-gst-rtsp-server-1.0",
    "gstreamer1.0-plugins-base",
    "gstreamer1.0-plugins-good",
    "gstreamer1.0-plugins-ugly",
)
#: The GStreamer elements the pipeline is made of (rtpbin: the server's own RTP sessions).
ELEMENTS = ("appsrc", "videoconvert", "x264enc", "rtph264pay", "rtpbin")
#: Where the stream is mounted unless told otherwise: ``rtsp://127.0.0.1:PORT/camera``.
PATH = "/camera"
#: How long the server may take to listen once started: its first start on a machine builds
#: GStreamer's plugin registry, seconds on a loaded 2-core machine.
START_S = 45.0
#: Seconds of stream between key frames: what a client that joins waits at most for its first picture.
KEY_FRAME_S = 2.0


def server_command(port: int, width: int, height: int, fps: float, *, path: str = PATH) -> list[str]:
    """The command that serves raw ``width`` x ``height`` BGR frames at ``fps`` from its standard
    input at ``rtsp://127.0.0.1:{port}{path}``."""
    size = f"{width}x{height}"
    return [SYSTEM_PYTHON, str(SCRIPT), "--port", str(port), "--path", path, "--size", size, "--fps", f"{fps:g}"]


@cache
def unavailable() -> str | None:
    """Why the server cannot run here (what to install), or None when it can."""
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return f"{SYSTEM_PYTHON} is missing (Debian: apt-get install {' '.join(PACKAGES)})"
    try:
        done = subprocess.run(
            [SYSTEM_PYTHON, str(SCRIPT), "--check"], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"the RTSP server's check did not run: {exc}"
    return None if done.returncode == 0 else (done.stderr.strip() or done.stdout.strip() or "check failed")


# -- the server (Debian's Python only from here) --------------------------------------------------


def _gstreamer() -> tuple[Any, Any, Any]:
    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtspServer

    Gst.init(None)
    return GLib, Gst, GstRtspServer


def check() -> int:
    """Exit status 0 when every part is installed; otherwise say what is missing, and 1."""
    install = f"Debian: apt-get install {' '.join(PACKAGES)}"
    try:
        _, gst, _ = _gstreamer()
    except (ImportError, ValueError) as exc:  # ValueError: gi has no such typelib
        sys.stderr.write(f"GStreamer's RTSP server is not importable ({exc}); {install}\n")
        return 1
    missing = [name for name in ELEMENTS if gst.ElementFactory.find(name) is None]
    if missing:
        sys.stderr.write(f"GStreamer elements missing: {', '.join(missing)}; {install}\n")
        return 1
    return 0


class _Feed:
    """Reads frames from standard input and pushes each to the pipelines being watched now."""

    def __init__(self, gst: Any, frame_bytes: int, on_end: Any) -> None:
        self._gst = gst
        self._frame_bytes = frame_bytes
        self._on_end = on_end
        self._lock = threading.Lock()
        self._sources: list[Any] = []
        self.frames = 0

    def attach(self, appsrc: Any) -> None:
        with self._lock:
            self._sources.append(appsrc)

    def detach(self, appsrc: Any) -> None:
        with self._lock:
            if appsrc in self._sources:
                self._sources.remove(appsrc)

    def run(self) -> None:
        # Unbuffered: a buffered reader's lock, held by this thread while it waits for the next frame,
        # would stop the interpreter from finishing at exit.
        stdin = open(sys.stdin.fileno(), "rb", buffering=0, closefd=False)  # noqa: SIM115
        frame = bytearray(self._frame_bytes)
        view = memoryview(frame)
        try:
            while True:
                got = 0
                while got < self._frame_bytes:
                    n = stdin.readinto(view[got:])
                    if not n:
                        return
                    got += n
                self.frames += 1
                with self._lock:
                    sources = list(self._sources)
                for appsrc in sources:
                    # appsrc stamps the buffer with the pipeline's running time as it arrives: a live
                    # camera's timing, whatever the pace of the writer.
                    appsrc.emit("push-buffer", self._gst.Buffer.new_wrapped(bytes(frame)))
        finally:
            self._on_end()


def serve(port: int, path: str, width: int, height: int, fps: float) -> int:
    """Serve standard input's frames at ``rtsp://127.0.0.1:{port}{path}`` until it ends or a signal."""
    glib, gst, rtsp = _gstreamer()
    loop = glib.MainLoop()
    feed = _Feed(gst, width * height * 3, lambda: glib.idle_add(loop.quit))
    rate = f"{round(fps * 1000)}/1000"
    key_int = max(1, round(fps * KEY_FRAME_S))
    # The encoder keeps up in real time; should it not, appsrc drops the oldest frames (a queue of
    # three), never the process's memory.
    queue = f"max-bytes={3 * width * height * 3} leaky-type=downstream"
    launch = (
        f"( appsrc name=scene is-live=true do-timestamp=true format=time block=false {queue}"
        f" caps=video/x-raw,format=BGR,width={width},height={height},framerate={rate}"
        " ! videoconvert ! video/x-raw,format=I420"
        f" ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max={key_int} threads=1"
        " ! video/x-h264,profile=constrained-baseline"
        " ! rtph264pay name=pay0 pt=96 config-interval=-1 )"
    )
    factory = rtsp.RTSPMediaFactory()
    factory.set_launch(launch)
    factory.set_shared(True)  # one encoder for every client, as a camera has

    def on_media_configure(_factory: Any, media: Any) -> None:
        appsrc = media.get_element().get_by_name_recurse_up("scene")
        feed.attach(appsrc)
        media.connect("unprepared", lambda _media: feed.detach(appsrc))

    factory.connect("media-configure", on_media_configure)
    server = rtsp.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(port))
    server.get_mount_points().add_factory(path, factory)
    if server.attach(None) == 0:
        sys.stderr.write(f"rtsp server: cannot listen on 127.0.0.1:{port}\n")
        return 1
    for signum in (signal.SIGTERM, signal.SIGINT):
        glib.unix_signal_add(glib.PRIORITY_DEFAULT, signum, lambda: loop.quit() or False)
    threading.Thread(target=feed.run, name="rtsp-feed", daemon=True).start()
    sys.stderr.write(f"rtsp server: serving rtsp://127.0.0.1:{port}{path} ({width}x{height} at {fps:g} fps)\n")
    sys.stderr.flush()
    loop.run()
    sys.stderr.write(f"rtsp server: ended after {feed.frames} frames read\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="only say whether the GStreamer parts are installed")
    p.add_argument("--port", type=int, default=8554)
    p.add_argument("--path", default=PATH, help=f"where the stream is mounted (default {PATH})")
    p.add_argument("--size", default="640x480", help="the frames' WIDTHxHEIGHT")
    p.add_argument("--fps", type=float, default=5.0, help="the frames' rate")
    args = p.parse_args(argv)
    if args.check:
        return check()
    width, _, height = args.size.partition("x")
    if not args.path.startswith("/"):
        p.error("--path starts with /")
    return serve(args.port, args.path, int(width), int(height), args.fps)


if __name__ == "__main__":
    sys.exit(main())
