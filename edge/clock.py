"""Wall-clock time stamps and whether the clock is synchronised.

A Pi has no real-time clock: after a power cut it boots with the time it last saved until NTP
answers. Events therefore carry ``clock_synced`` so the server can tell a trustworthy time stamp
from a guess.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import time
from datetime import datetime
from pathlib import Path

log = logging.getLogger(__name__)

_TIME_ERROR = 5  # adjtimex() state: "clock not synchronised" (STA_UNSYNC set)
_TIMESYNCD_FLAG = Path("/run/systemd/timesync/synchronized")


class _Timex(ctypes.Structure):
    # struct timex from <sys/timex.h>: only the leading "modes" field is written (0 = read only);
    # the kernel fills the rest, so reserve generously for every architecture.
    _fields_ = [("modes", ctypes.c_uint), ("_rest", ctypes.c_byte * 512)]


def _kernel_synced() -> bool | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        tx = _Timex()
        state = libc.adjtimex(ctypes.byref(tx))
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    return bool(state != _TIME_ERROR)


class ClockMonitor:
    """Answers "is the wall clock synchronised?" cheaply, re-checking at most every ``ttl`` seconds."""

    def __init__(self, ttl: float = 10.0) -> None:
        self.ttl = ttl
        self._checked_at = -1e9
        self._synced = False

    def synced(self) -> bool:
        now = time.monotonic()
        if now - self._checked_at >= self.ttl:
            kernel = _kernel_synced()
            self._synced = bool(kernel) or _TIMESYNCD_FLAG.exists()
            self._checked_at = now
        return self._synced


def now_iso() -> str:
    """Local time with its UTC offset and milliseconds, as in the event contract."""
    return datetime.now().astimezone().isoformat(timespec="milliseconds")
