"""Wall-clock time stamps, whether the clock is synchronised, and the time signed commands are judged by.

A Pi has no real-time clock: after a power cut it boots with the time it last saved (fake-hwclock)
until NTP answers. Events therefore carry ``clock_synced`` so the server can tell a trustworthy time
stamp from a guess.

**Command time** (:class:`CommandClock`). A signed command is valid from ``iat - skew`` to ``exp``,
in the server's time (DESIGN.md §4). Judged by a clock that fake-hwclock put hours or days behind,
every fresh command is ``not_yet_valid``, and the emergency warning sent during a storm outage would
be refused. So commands are judged by what the device *knows* about the time:

- While the clock is synchronised, the device records (store ``meta`` key ``clock``, at most once a
  minute) the wall time with the kernel's boot id and the time since boot (``CLOCK_BOOTTIME``, which
  also counts suspend).
- **Synchronised**: the wall clock.
- **Not synchronised, in the boot of the record**: the recorded time plus the time since it was
  recorded; as good as the clock was (crystal drift aside).
- **Not synchronised, after a reboot**: only a *lower bound*: the recorded time plus the time since
  this boot (the record was made before the boot began), raised by every accepted command's
  ``iat - skew`` (the server's signed word for its time). With no upper bound on how long the device
  was off, nothing is ``not_yet_valid``. A command is ``expired`` if its ``exp`` is before the bound,
  or if it was issued before the recorded time (less the skew): it is older than what the device
  already knew, and a command meant for it then would have come while it was up.
- **Not synchronised and never recorded** (never seen synchronised while running): the wall clock,
  for want of anything better.

Every judgement uses at least the *floor* (``meta`` key ``clock_floor``): the highest time the
command journal ever forgot by, stored before it forgets. The lower bound after a reboot starts again
from the record; the floor does not, so a command the journal no longer remembers is ``expired``
after any restart or reboot, and no command runs twice.

What this gives up: after a reboot without NTP, a command issued while the device was off, whose
``exp`` has passed in real time but not by the lower bound, is accepted, and runs once (its
``cmd_id`` is journaled before it runs). Only the commune server can sign one; someone who captured
it on its way could deliver it late, not twice. Refusing everything until NTP answers would refuse
the warning the outage is about.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
import math
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal, Protocol

log = logging.getLogger(__name__)

_TIME_ERROR = 5  # adjtimex() state: "clock not synchronised" (STA_UNSYNC set)
_TIMESYNCD_FLAG = Path("/run/systemd/timesync/synchronized")
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def kernel_boot_id() -> str:
    """The kernel's id of this boot (it changes at every power-up); "" where there is none."""
    try:
        return _BOOT_ID.read_text(encoding="ascii").strip()
    except OSError:
        return ""


def since_boot() -> float:
    """Seconds since the machine booted, counting suspend; never set by NTP or fake-hwclock."""
    clock = getattr(time, "CLOCK_BOOTTIME", None)
    try:
        return time.clock_gettime(clock) if clock is not None else time.monotonic()
    except OSError:
        return time.monotonic()


#: ``meta`` keys: the last synchronised time (JSON :class:`SyncRecord`) and the floor (Unix seconds).
META_RECORD = "clock"
META_FLOOR = "clock_floor"

#: How often the synchronised time is recorded. A power cut loses at most this much of what the
#: device knew, which only makes the lower bound after it lower (more lenient, never wrong).
RECORD_EVERY_S = 60.0


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


def _iso(ts: float) -> str:
    try:
        return datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds")
    except (OverflowError, OSError, ValueError):
        return f"{ts:.0f} (Unix)"


# -- the time signed commands are judged by -----------------------------------------------------------


class TimeSource(Protocol):
    """The clocks a :class:`CommandClock` reads (:class:`SystemTime`, or a test's own)."""

    def synced(self) -> bool:
        """Whether the wall clock is synchronised (NTP)."""
        ...

    def wall(self) -> float:
        """Wall-clock time, Unix seconds."""
        ...

    def boottime(self) -> float:
        """Seconds since this boot, counting suspend; restarts from zero at every boot."""
        ...

    def boot_id(self) -> str:
        """An id that changes at every boot ("" if unknown)."""
        ...


class SystemTime:
    """This machine's clocks: :class:`ClockMonitor`, ``time.time()``, ``CLOCK_BOOTTIME``, the kernel's boot id."""

    def __init__(self, monitor: ClockMonitor | None = None) -> None:
        self.monitor = monitor or ClockMonitor()
        self._boot_id: str | None = None

    def synced(self) -> bool:
        return self.monitor.synced()

    def wall(self) -> float:
        return time.time()

    def boottime(self) -> float:
        return since_boot()

    def boot_id(self) -> str:
        if self._boot_id is None:
            self._boot_id = kernel_boot_id()
        return self._boot_id


class MetaStore(Protocol):
    """Where a :class:`CommandClock` keeps what it knows (the event store's ``meta`` table)."""

    def get_meta(self, key: str) -> str | None: ...

    def set_meta(self, key: str, value: str) -> None: ...


@dataclass(frozen=True)
class SyncRecord:
    """The wall clock while it was synchronised, with where this machine was in its boot then."""

    wall: float
    boottime: float
    boot_id: str


#: How the time of a :class:`CommandTime` was found.
Basis = Literal["synced", "same_boot", "lower_bound", "unsynced"]


@dataclass(frozen=True)
class CommandTime:
    """The time a command is judged against, and how much it can be trusted."""

    #: Unix seconds: the time (``exact``), or a time that has certainly passed (``lower_bound``).
    now: float
    basis: Basis
    #: With ``lower_bound``: the last synchronised time; a command issued before it (less the skew)
    #: is older than what this device already knew.
    issued_after: float | None = None
    #: What a rejection's detail says about the clock ("" when it is synchronised).
    note: str = ""

    @property
    def exact(self) -> bool:
        """False when only a lower bound is known: then nothing can be judged "not yet valid"."""
        return self.basis != "lower_bound"

    @property
    def trusted(self) -> bool:
        """False for an unsynchronised clock never seen synchronised: not a time to forget by."""
        return self.basis != "unsynced"


class CommandClock:
    """The time signed commands are judged by (see the module docstring), kept in a :class:`MetaStore`."""

    def __init__(self, store: MetaStore, source: TimeSource | None = None) -> None:
        self.store = store
        self.source: TimeSource = source or SystemTime()
        self._lock = threading.Lock()
        self._record = self._load_record()
        self._floor = self._load_floor()
        self._signed = 0.0  # the highest iat - skew of an accepted command in this run
        self._recorded_at: float | None = None  # monotonic time of the last record written

    def _load_record(self) -> SyncRecord | None:
        text = self.store.get_meta(META_RECORD)
        if text is None:
            return None
        try:
            data = json.loads(text)
            record = SyncRecord(float(data["wall"]), float(data["boottime"]), str(data["boot_id"]))
        except (ValueError, KeyError, TypeError) as exc:
            log.error("ignoring the stored clock record %r: %s", text[:200], exc)
            return None
        return record if math.isfinite(record.wall) and math.isfinite(record.boottime) else None

    def _load_floor(self) -> float:
        try:
            floor = float(self.store.get_meta(META_FLOOR) or 0.0)
        except ValueError:
            return 0.0
        return floor if math.isfinite(floor) else 0.0

    def now(self) -> CommandTime:
        """The time to judge a command by, now."""
        source = self.source
        with self._lock:
            floor, record, signed = self._floor, self._record, self._signed
        if source.synced():
            wall = source.wall()
            self._remember(wall)
            return CommandTime(max(wall, floor), "synced")
        if record is None:
            return CommandTime(
                max(source.wall(), floor),
                "unsynced",
                note="clock not synchronised, and never seen synchronised: judged by this clock",
            )
        up = source.boottime()
        if source.boot_id() == record.boot_id and up >= record.boottime:
            since = up - record.boottime
            return CommandTime(
                max(record.wall + since, floor),
                "same_boot",
                note=f"clock not synchronised; judged by {_iso(record.wall)} (synchronised, this boot) + {since:.0f} s",
            )
        # The record was made before this boot began, so at least ``up`` seconds have passed since.
        bound = max(record.wall + up, floor, signed)
        return CommandTime(
            bound,
            "lower_bound",
            issued_after=record.wall,
            note=f"clock not synchronised since {_iso(record.wall)}, before this boot; it is at least {_iso(bound)}",
        )

    def observe(self, iat: int, skew_s: float) -> None:
        """An accepted command was issued at ``iat`` by the server's clock: the time is at least
        ``iat - skew_s``. Used while only a lower bound is known."""
        with self._lock:
            self._signed = max(self._signed, iat - skew_s)

    def remember(self) -> None:
        """While synchronised, record the time (at most every :data:`RECORD_EVERY_S`); call it often."""
        if self.source.synced():
            self._remember(self.source.wall())

    def _remember(self, wall: float) -> None:
        mono = time.monotonic()
        with self._lock:
            if self._recorded_at is not None and mono - self._recorded_at < RECORD_EVERY_S:
                return
            self._recorded_at = mono
            record = SyncRecord(wall, self.source.boottime(), self.source.boot_id())
            self._record = record
        self.store.set_meta(META_RECORD, json.dumps(asdict(record)))

    def forget_before(self) -> float | None:
        """The time the command journal may forget by (less its grace), or None while no time can be
        trusted. It is stored as the floor first, so no later judgement, after a restart or a reboot,
        falls behind what was forgotten."""
        at = self.now()
        if not at.trusted:
            return None
        with self._lock:
            raised = at.now > self._floor
            self._floor = max(self._floor, at.now)
        if raised:
            self.store.set_meta(META_FLOOR, repr(at.now))
        return at.now
