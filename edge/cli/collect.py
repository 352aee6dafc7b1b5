"""``edge collect``: the commune-side collector."""

from __future__ import annotations

import argparse
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

from edge.cli.common import out

log = logging.getLogger(__name__)


def cmd_collect(args: argparse.Namespace) -> int:
    import signal

    from edge.server.collector import Collector

    password = None
    if args.password_file is not None:
        if not args.username:
            log.error("--password-file needs --username")
            return 2
        try:
            # One line, as the device's mqtt-password credential: the newline an editor adds is not part of it.
            password = args.password_file.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            log.error("cannot read the password file %s: %s", args.password_file, exc)
            return 2
    collector = Collector(
        args.broker,
        args.db,
        commune=args.commune,
        root=args.root,
        client_id=args.client_id,
        ca_file=args.ca,
        cert_file=args.cert,
        key_file=args.key,
        username=args.username,
        password=password,
        share=args.share,
        max_message_bytes=args.max_message_bytes,
        max_queued_bytes=args.max_queued_bytes,
        store_retry_s=args.store_retry_s,
        media_dir=args.media,
    ).start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    deadline = time.monotonic() + args.duration if args.duration else None
    last = time.monotonic()
    try:
        while not stop.wait(0.5):
            if collector.failed.is_set():
                # Already logged by the supervisor; the summary still goes to stdout below.
                break
            now = time.monotonic()
            if args.summary_interval and now - last >= args.summary_interval:
                last = now
                log.info("collector: %s", json.dumps(collector.summary()))
            if deadline is not None and now >= deadline:
                break
    finally:
        collector.stop()
    out(json.dumps(collector.summary(), ensure_ascii=False))
    if collector.failed.is_set():
        log.error("collector stopped: %s", collector.supervisor.reason)
        return 1
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("collect", help="the commune-side collector: subscribe, store, acknowledge")
    p.add_argument("--broker", required=True, help="mqtt://HOST:PORT or mqtts://HOST:PORT")
    p.add_argument(
        "--db",
        required=True,
        help="where to store events: a SQLite file, or postgresql://USER@HOST[:PORT]/DB "
        "(several collectors may share one)",
    )
    p.add_argument(
        "--share",
        metavar="GROUP",
        default=None,
        help="subscribe through the MQTT 5 shared subscription $share/GROUP/...: the collectors of one group "
        "share the messages (give them one PostgreSQL --db and distinct --client-id)",
    )
    p.add_argument("--username", default=None, help="MQTT username, for a broker that logs in with passwords")
    p.add_argument("--password-file", type=Path, default=None, help="file holding the MQTT password (one line)")
    p.add_argument("--commune", default="+", help="commune slug, or + for all")
    p.add_argument("--root", default="vn")
    p.add_argument("--client-id", default=None)
    p.add_argument("--ca", type=Path, help="CA certificate (mqtts)")
    p.add_argument("--cert", type=Path, help="client certificate (mqtts)")
    p.add_argument("--key", type=Path, help="client key (mqtts)")
    p.add_argument("--max-message-bytes", type=int, default=4 * 1024 * 1024)
    p.add_argument(
        "--media",
        type=Path,
        default=None,
        help="directory for uploaded evidence clips (default: media/ beside a SQLite --db; "
        "with PostgreSQL only when given, its index then in DIR/media.db)",
    )
    p.add_argument(
        "--max-queued-bytes",
        type=int,
        default=256 * 1024 * 1024,
        help="messages waiting to be stored take at most this much memory; past it the oldest is dropped "
        "(its device sends it again)",
    )
    p.add_argument(
        "--store-retry-s",
        type=float,
        default=60.0,
        help="a database that keeps failing this long ends the collector (exit 1, for systemd to restart it)",
    )
    p.add_argument("--summary-interval", type=float, default=60.0, help="seconds between summary log lines")
    p.add_argument("--duration", type=float, default=None, help="exit after this many seconds")
    p.set_defaults(func=cmd_collect, default_log="INFO")
