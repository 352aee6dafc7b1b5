"""``edge sim``: a simulated device, the real daemon with simulated hardware."""

from __future__ import annotations

import argparse
import logging
import threading
import time
from typing import Any

from edge.cli.common import add_common, load

log = logging.getLogger(__name__)


def cmd_sim(args: argparse.Namespace) -> int:
    """A simulated device: the real daemon, plus a driver that produces test events."""
    from edge.daemon import Daemon

    daemon = Daemon(load(args)).start()
    stop = threading.Event()
    import signal

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    deadline = time.monotonic() + args.duration if args.duration else None
    n = 0
    try:
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            if args.count is None or n < args.count:
                n += 1
                committed = daemon.outbox.append("test", {"sim": True, "n": n, "note": "simulated device"})
                log.info("simulated test event %d committed as %s", n, committed.id)
            stop.wait(args.interval)
    finally:
        daemon.stop()
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("sim", help="run a simulated device (the daemon plus simulated hardware)")
    add_common(p)
    p.add_argument("--interval", type=float, default=2.0, help="seconds between simulated test events")
    p.add_argument("--count", type=int, default=None, help="stop producing after this many events")
    p.add_argument("--duration", type=float, default=None, help="exit after this many seconds")
    p.set_defaults(func=cmd_sim, default_log="INFO")
