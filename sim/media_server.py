"""A small HTTP(S) media server on loopback for tests and the demo: audio files and live streams.

It stands in for the commune's media server and its radio station's Icecast server:

- **files** (``add_file``) are served whole, with or without a Content-Length, so a client can be
  tested against a server that sends more than it announced;
- **redirects** (``add_redirect``) point anywhere, including hosts a device must not follow;
- **live streams** (``add_live``) send an audio file's bytes paced in real time (after an initial
  burst, as Icecast sends one to fill a new listener's buffer), looping it, and can be told to
  ``stall()`` (connections stay open, no bytes flow), ``resume()``, ``drop()`` (every connection is cut
  without a proper end) and ``end()`` (every response is completed: a clean end of the programme).

Live streams use chunked transfer encoding by default, so a clean end is distinguishable from a
cut connection; ``framing="close"`` sends them as Icecast does (no length, the end is the close).

Run it by hand for the demo::

    python -m sim.media_server --port 8088 --file announcement.mp3 --live radio=programme.mp3
    curl -X POST http://127.0.0.1:8088/_control/radio/stall     # ... /resume, /drop, /end
"""

from __future__ import annotations

import argparse
import logging
import mimetypes
import ssl
import sys
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

#: How often a live stream sends a piece of its bytes.
TICK_S = 0.02


@dataclass
class ServedFile:
    """A file the server answers with: its bytes, type, and what Content-Length it announces."""

    data: bytes
    content_type: str = "application/octet-stream"
    content_length: int | None = -1
    """-1: the true length; None: no Content-Length (the body ends when the connection closes)."""


@dataclass
class LiveStream:
    """A live stream: ``data`` (an encoded audio file of ``duration_s``) sent in real time, looped."""

    data: bytes
    duration_s: float
    content_type: str = "audio/mpeg"
    loop: bool = True
    burst_s: float = 0.5
    framing: str = "chunked"
    """``chunked`` (a clean end is the final chunk) or ``close`` (Icecast: no length, the end is the close)."""
    connections: int = 0
    """Connections accepted so far."""
    listeners: int = 0
    """Connections being served now."""
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _stalled: bool = False
    _ended: bool = False
    _drops: int = 0

    @property
    def bytes_per_s(self) -> float:
        return len(self.data) / self.duration_s

    def stall(self) -> None:
        """Stop sending bytes on every connection (they stay open), and to new ones."""
        with self._cond:
            self._stalled = True
            self._cond.notify_all()

    def resume(self) -> None:
        """Send again, in real time from where each connection stopped."""
        with self._cond:
            self._stalled = False
            self._cond.notify_all()

    def drop(self) -> None:
        """Cut every open connection without ending its response (a lost connection)."""
        with self._cond:
            self._drops += 1
            self._cond.notify_all()

    def end(self) -> None:
        """End the programme: complete every response; new connections are answered 404."""
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    @property
    def stalled(self) -> bool:
        return self._stalled

    @property
    def ended(self) -> bool:
        return self._ended


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("media server: %s", format % args)

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        media = self.server.media
        media.requests.append(path)
        if path in media.redirects:
            status, location = media.redirects[path]
            self.send_response(status)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if path in media.files:
            self._send_file(media.files[path])
            return
        live = media.lives.get(path)
        if live is not None and not live.ended:
            self._send_live(live)
            return
        self.send_error(HTTPStatus.NOT_FOUND)

    def do_POST(self) -> None:
        # /_control/<name>/<stall|resume|drop|end>: the demo's remote control of a live stream.
        parts = urlsplit(self.path).path.strip("/").split("/")
        live = self.server.media.lives.get("/live/" + parts[1]) if len(parts) == 3 else None
        action = parts[2] if len(parts) == 3 else ""
        if parts[0] != "_control" or live is None or action not in ("stall", "resume", "drop", "end"):
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        getattr(live, action)()
        self.send_response(HTTPStatus.NO_CONTENT)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _send_file(self, served: ServedFile) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", served.content_type)
        length = len(served.data) if served.content_length == -1 else served.content_length
        if length is None:
            self.send_header("Connection", "close")
            self.close_connection = True
        else:
            self.send_header("Content-Length", str(length))
        self.end_headers()
        self.wfile.write(served.data)

    def _send_live(self, live: LiveStream) -> None:
        chunked = live.framing == "chunked"
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", live.content_type)
        self.send_header("Cache-Control", "no-cache")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        self.connection.settimeout(5.0)  # a listener that stops reading must not hold a thread for ever
        with live._cond:
            live.connections += 1
            live.listeners += 1
            drops = live._drops
        try:
            self._pace(live, chunked, drops)
        except OSError as exc:  # the client went away
            log.debug("media server: live listener gone: %s", exc)
        finally:
            with live._cond:
                live.listeners -= 1

    def _pace(self, live: LiveStream, chunked: bool, drops: int) -> None:
        data, bps = live.data, live.bytes_per_s
        pos = 0
        owed = live.burst_s * bps  # bytes this listener is due and has not been sent yet
        last = time.monotonic()
        while True:
            with live._cond:
                while live._stalled and not (live._ended or live._drops != drops or self.server.closing):
                    live._cond.wait(0.1)
                    last = time.monotonic()  # nothing is owed for the stalled time
                if live._drops != drops or self.server.closing:
                    return  # cut: no final chunk
                if live._ended:
                    break
            now = time.monotonic()
            owed += (now - last) * bps
            last = now
            n = int(owed)
            if n > 0:
                if pos >= len(data):
                    if not live.loop:
                        break
                    pos = 0
                piece = data[pos : pos + n]
                pos += len(piece)
                owed -= len(piece)
                self._write(piece, chunked)
            time.sleep(TICK_S)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

    def _write(self, piece: bytes, chunked: bool) -> None:
        if chunked:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        else:
            self.wfile.write(piece)
        self.wfile.flush()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    media: MediaServer
    closing: bool = False

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that fails its TLS handshake or hangs up is what some tests do on purpose.
        log.debug("media server: connection from %s failed: %s", client_address, sys.exc_info()[1])


class MediaServer:
    """The server, listening on ``127.0.0.1`` (a free port unless given); HTTPS with ``cert_file``.

    A context manager; ``close()`` stops it and cuts every connection.
    """

    def __init__(
        self,
        *,
        port: int = 0,
        cert_file: Path | None = None,
        key_file: Path | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.files: dict[str, ServedFile] = {}
        self.redirects: dict[str, tuple[int, str]] = {}
        self.lives: dict[str, LiveStream] = {}
        self.requests: list[str] = []
        """Paths asked for, in order."""
        self._server = _Server((host, port), _Handler)
        self._server.media = self
        self.tls = cert_file is not None
        if cert_file is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
            # The handshake happens in the connection's own thread, so one slow client cannot hold the
            # accepting thread.
            self._server.socket = ctx.wrap_socket(self._server.socket, server_side=True, do_handshake_on_connect=False)
        self.host = host
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="media-server", daemon=True
        )
        self._thread.start()

    def url(self, path: str, *, host: str | None = None) -> str:
        """The URL of ``path`` on this server (``host`` may name it differently, e.g. ``localhost``)."""
        return f"{'https' if self.tls else 'http'}://{host or self.host}:{self.port}{path}"

    def add_file(
        self, path: str, data: bytes, *, content_type: str | None = None, content_length: int | None = -1
    ) -> str:
        """Serve ``data`` at ``path`` (e.g. ``/files/a.mp3``); returns its URL. See :class:`ServedFile`."""
        ctype = content_type or mimetypes.guess_type(path)[0] or "application/octet-stream"
        self.files[path] = ServedFile(data, ctype, content_length)
        return self.url(path)

    def add_redirect(self, path: str, location: str, *, status: int = 302) -> str:
        """Answer ``path`` with a redirect to ``location``; returns the URL of ``path``."""
        self.redirects[path] = (status, location)
        return self.url(path)

    def add_live(self, name: str, data: bytes, duration_s: float, **options: Any) -> LiveStream:
        """Serve a live stream at ``/live/<name>`` (options: see :class:`LiveStream`)."""
        live = LiveStream(data, duration_s, **options)
        self.lives[f"/live/{name}"] = live
        return live

    def live_url(self, name: str) -> str:
        return self.url(f"/live/{name}")

    def close(self) -> None:
        """Stop serving and end every connection. Idempotent."""
        if self._server.closing:
            return
        self._server.closing = True
        for live in self.lives.values():
            with live._cond:
                live._cond.notify_all()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> MediaServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _duration(path: Path) -> float:
    import soundfile

    info = soundfile.info(str(path))
    return float(info.frames) / float(info.samplerate)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sim.media_server", description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, default=8088)
    p.add_argument("--file", type=Path, action="append", default=[], help="serve FILE at /files/<name>")
    p.add_argument("--live", action="append", default=[], metavar="NAME=FILE", help="a live stream at /live/NAME")
    p.add_argument("--cert", type=Path, help="TLS certificate (PEM): serve HTTPS")
    p.add_argument("--key", type=Path, help="the certificate's key (PEM)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    server = MediaServer(port=args.port, cert_file=args.cert, key_file=args.key)
    for f in args.file:
        log.info("%s", server.add_file(f"/files/{f.name}", f.read_bytes()))
    for spec in args.live:
        name, _, file = spec.partition("=")
        path = Path(file)
        ctype = "audio/ogg" if path.suffix in (".ogg", ".opus") else "audio/mpeg"
        server.add_live(name, path.read_bytes(), _duration(path), content_type=ctype)
        log.info("%s", server.live_url(name))
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
