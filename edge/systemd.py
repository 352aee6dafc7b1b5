"""systemd integration without a dependency: ``sd_notify``, the watchdog, and journald's native protocol.

**Notifications** (``sd_notify(3)``): systemd passes ``$NOTIFY_SOCKET`` to a ``Type=notify`` service;
one datagram of ``KEY=value`` lines says ``READY=1`` (the store is open and the services run; or
the daemon is up and waiting for room on a full disk to open its store, as ``STATUS=`` then says),
``STATUS=...`` (shown by ``systemctl status``), ``STOPPING=1``, ``RELOADING=1`` (an in-process restart
for a new configuration) and ``WATCHDOG=1``. Outside systemd every notification is a no-op.

**Watchdog**: with ``WatchdogSec=`` systemd sets ``$WATCHDOG_USEC`` and kills (then, with
``Restart=always``, restarts) a service that does not send ``WATCHDOG=1`` within that time.
:class:`Watchdog` sends it every half period, but only while a liveness predicate holds, so a daemon
whose loop has died or hung is restarted even when the process itself still runs.
:class:`DaemonWatchdog` is that predicate for ``edge run``: the daemon's
:class:`~edge.supervisor.Supervisor` must be running, must find every loop alive (the daemon's own
and each service's threads) and none hung (the MQTT link and the uplink making their rounds), and
must have finished a round recently (a round that does not finish means the supervisor itself, or
the store it writes to, is stuck). A device that is merely offline is healthy: it keeps every event
and sends them when the broker returns, and restarting it would not bring the broker back.

**Journal**: :class:`JournalHandler` writes log records to journald's native socket with structured
fields (``PRIORITY``, ``EDGE_DEVICE``, ``EDGE_EVENT_TYPE``, ``EDGE_CMD_ID``, the logger and the code
location), so ``journalctl -u commune-edge EDGE_CMD_ID=...`` finds everything one command did.
:func:`use_journal_if_attached` installs it when stderr is the journal stream systemd set up.
"""

from __future__ import annotations

import array
import contextlib
import errno
import fcntl
import logging
import os
import re
import socket
import struct
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edge.supervisor import Supervisor

log = logging.getLogger(__name__)

JOURNAL_SOCKET = Path("/run/systemd/journal/socket")
SYSLOG_IDENTIFIER = "commune-edge"

#: How long an in-process restart (stop everything, start with the new configuration) counts as
#: healthy without a supervisor to ask: stopping the services alone may take their join timeouts.
RESTART_GRACE_S = 60.0


# -- sd_notify ------------------------------------------------------------------------------------


def _socket_address(value: str) -> str | bytes | None:
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        # An abstract socket: '@' stands for the leading NUL byte.
        return b"\0" + value[1:].encode()
    return None


class Notifier:
    """Sends ``sd_notify`` datagrams to ``$NOTIFY_SOCKET`` (or ``socket_path``); a no-op without one."""

    def __init__(self, socket_path: str | None = None, env: Mapping[str, str] | None = None) -> None:
        environ = os.environ if env is None else env
        value = socket_path if socket_path is not None else environ.get("NOTIFY_SOCKET", "")
        self.address = _socket_address(value) if value else None
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        """Whether a notification socket is configured (the service runs under systemd)."""
        return self.address is not None

    def send(self, **fields: str | int) -> bool:
        """Send ``KEY=value`` lines in one datagram, e.g. ``send(READY=1, STATUS="running")``.
        True if it was sent; a failure is logged and never raised (systemd's absence is not an error)."""
        if self.address is None:
            return False
        lines = []
        for key, value in fields.items():
            text = str(value).replace("\n", " ")  # a newline would start another assignment
            lines.append(f"{key}={text}")
        data = ("\n".join(lines) + "\n").encode()
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.sendto(data, self.address)
            except OSError as exc:
                log.debug("sd_notify %s failed: %s", ", ".join(fields), exc)
                return False
        return True

    def ready(self, status: str = "") -> bool:
        """``READY=1``: start-up is finished (systemd then starts the units ordered after this one)."""
        return self.send(READY=1, STATUS=status) if status else self.send(READY=1)

    def status(self, text: str) -> bool:
        """``STATUS=``: one line for ``systemctl status``."""
        return self.send(STATUS=text)

    def stopping(self, status: str = "") -> bool:
        """``STOPPING=1``: the service is shutting down."""
        return self.send(STOPPING=1, STATUS=status) if status else self.send(STOPPING=1)

    def reloading(self, status: str = "") -> bool:
        """``RELOADING=1``: restarting in-process; ``ready()`` follows when done."""
        fields: dict[str, str | int] = {"RELOADING": 1}
        if status:
            fields["STATUS"] = status
        # systemd 253 and later want the time of the reload; older ones ignore the field.
        fields["MONOTONIC_USEC"] = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send(**fields)

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: one pet."""
        return self.send(WATCHDOG=1)

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


def watchdog_period(env: Mapping[str, str] | None = None) -> float | None:
    """The watchdog period systemd asks for (``$WATCHDOG_USEC``, in seconds), or None when there is
    none or it is meant for another process (``$WATCHDOG_PID``)."""
    environ = os.environ if env is None else env
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = environ.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None
    return usec / 1_000_000


# -- the watchdog ---------------------------------------------------------------------------------


class Watchdog:
    """Pets systemd's watchdog every ``period_s / 2`` while ``alive()`` is true.

    ``alive()`` returns True, or False with :attr:`reason` to say why: a predicate may also return a
    string, which counts as "not alive" and is the reason. While it fails nothing is sent, so systemd
    kills the service once the period passes; the first failure is logged and shown as ``STATUS=``.
    An exception in the predicate counts as a failure. Without a period (not under a systemd
    watchdog) ``start()`` starts nothing.
    """

    def __init__(
        self,
        alive: Callable[[], bool | str],
        notifier: Notifier | None = None,
        period_s: float | None = None,
    ) -> None:
        self.alive = alive
        self.notifier = notifier or Notifier()
        self.period_s = period_s if period_s is not None else watchdog_period()
        #: How many times the watchdog was petted, and why the last check failed ("" while healthy).
        self.pets = 0
        self.reason = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def interval_s(self) -> float | None:
        """Seconds between pets: half the period, as ``sd_watchdog_enabled(3)`` advises."""
        return None if self.period_s is None else self.period_s / 2

    def check(self) -> bool:
        """Ask the predicate once; pet if it holds. Returns whether it held."""
        try:
            verdict = self.alive()
        except Exception as exc:  # a broken check must not pass for a healthy daemon
            verdict = f"the liveness check failed: {type(exc).__name__}: {exc}"
        healthy = verdict is True
        reason = "" if healthy else (verdict if isinstance(verdict, str) and verdict else "not alive")
        if healthy:
            if self.reason:
                log.warning("watchdog: healthy again; petting resumes")
                self.notifier.status("running")
            self.notifier.watchdog()
            self.pets += 1
        elif reason != self.reason:
            log.error("watchdog: not petting systemd's watchdog: %s", reason)
            self.notifier.status(f"unhealthy: {reason}")
        self.reason = reason
        return healthy

    def _run(self) -> None:
        interval = self.interval_s
        assert interval is not None
        while True:
            self.check()
            if self._stop.wait(interval):
                return

    def start(self) -> Watchdog:
        if self.interval_s is None or not self.notifier.enabled or self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._run, name="systemd-watchdog", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)

    def __enter__(self) -> Watchdog:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class DaemonWatchdog:
    """The systemd side of ``edge run``: ``READY=1`` once the daemon has started, a :class:`Watchdog`
    that follows the daemon's :class:`~edge.supervisor.Supervisor`, ``RELOADING=1`` for an in-process
    restart and ``STOPPING=1`` at the end.

    Used by the daemon as ``serving(supervisor, device)`` after each start and ``stopping(restart)``
    before each stop.
    """

    def __init__(self, notifier: Notifier | None = None, period_s: float | None = None) -> None:
        self.notifier = notifier or Notifier()
        self._lock = threading.Lock()
        self._supervisor: Supervisor | None = None
        self._round_at = time.monotonic()
        self._restarting_since: float | None = time.monotonic()  # starting counts as restarting
        self.watchdog = Watchdog(self.alive, self.notifier, period_s)

    def stale_after_s(self, supervisor: Supervisor) -> float:
        """How old the supervisor's last finished round may be: several of its intervals, and never
        so little that one slow write to an SD card counts as a hang."""
        return max(10.0, 5 * supervisor.interval_s)

    def _on_round(self) -> None:
        # A supervisor chore: runs only after a round in which every loop was found alive.
        with self._lock:
            self._round_at = time.monotonic()

    def alive(self) -> bool | str:
        """True while the daemon is healthy; otherwise why not."""
        with self._lock:
            supervisor, round_at, restarting = self._supervisor, self._round_at, self._restarting_since
        now = time.monotonic()
        if supervisor is None:
            if restarting is not None and now - restarting <= RESTART_GRACE_S:
                return True
            return f"the daemon has not started again within {RESTART_GRACE_S:.0f} s"
        if supervisor.failed.is_set():
            return supervisor.reason or "a loop died"
        if not supervisor.alive():
            return "the supervisor thread is not running"
        dead = supervisor.check()
        if dead is not None:
            return dead
        stale = self.stale_after_s(supervisor)
        if now - round_at > stale:
            return f"the supervisor has not finished a round for {now - round_at:.0f} s (a loop or the store is stuck)"
        return True

    def serving(self, supervisor: Supervisor, device: str, status: str | None = None) -> None:
        """The daemon of ``device`` has started (the store is open, the services run; or, with
        ``status`` saying so, it is up and waiting for what it needs): follow ``supervisor``, and
        name the device in every journal entry from now on."""
        set_journal_device(device)
        with self._lock:
            self._supervisor = supervisor
            self._round_at = time.monotonic()
            self._restarting_since = None
        supervisor.chore("systemd watchdog", self._on_round)
        self.notifier.ready(status or f"running: device {device}")
        self.watchdog.start()

    def stopping(self, restart: bool = False) -> None:
        """The daemon is about to stop: for good (``STOPPING=1``, the watchdog stops), or to start
        again with a new configuration (``RELOADING=1``, healthy for up to :data:`RESTART_GRACE_S`)."""
        with self._lock:
            self._supervisor = None
            self._restarting_since = time.monotonic() if restart else None
        if restart:
            self.notifier.reloading("restarting with the new configuration")
            return
        self.watchdog.stop()
        self.notifier.stopping("stopping")


# -- journald -------------------------------------------------------------------------------------

#: Python's levels as syslog priorities (journald's PRIORITY field).
_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))
_FIELD_NAME = re.compile(r"^[A-Z0-9][A-Z0-9_]*$")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

#: The record attributes (``log.info(..., extra={"cmd_id": ...})``) that become journal fields.
RECORD_FIELDS = {"device": "EDGE_DEVICE", "event_type": "EDGE_EVENT_TYPE", "cmd_id": "EDGE_CMD_ID"}


def syslog_priority(levelno: int) -> int:
    """The syslog priority (0 emergency … 7 debug) of a Python log level."""
    for level, priority in _PRIORITIES:
        if levelno >= level:
            return priority
    return 7


def encode_journal_fields(fields: Mapping[str, str]) -> bytes:
    """journald's native serialisation: ``NAME=value`` lines, or for a value with a newline the name,
    a newline, the value's length as 64-bit little-endian, the value and a newline."""
    out = bytearray()
    for name, value in fields.items():
        if not _FIELD_NAME.match(name):
            raise ValueError(f"not a journal field name: {name!r}")
        data = value.encode("utf-8", "replace")
        if b"\n" in data:
            out += name.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += name.encode() + b"=" + data + b"\n"
    return bytes(out)


@dataclass
class JournalContext:
    """Fields added to every record of this process (the device, once the configuration is read)."""

    device: str = ""


class JournalHandler(logging.Handler):
    """Writes each record to journald's native socket with structured fields.

    ``EDGE_DEVICE``, ``EDGE_EVENT_TYPE`` and ``EDGE_CMD_ID`` come from the record's ``device``,
    ``event_type`` and ``cmd_id`` attributes (``extra=``); the device defaults to
    :attr:`context` ``.device``. The command channel names every command by its ``cmd_id`` (a UUID)
    among the log call's arguments, so for the ``edge.commands`` loggers a UUID argument is taken as
    the command id when ``extra`` gives none.
    """

    def __init__(self, socket_path: Path = JOURNAL_SOCKET, identifier: str = SYSLOG_IDENTIFIER) -> None:
        super().__init__()
        self.socket_path = socket_path
        self.identifier = identifier
        self.context = JournalContext()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    def fields(self, record: logging.LogRecord) -> dict[str, str]:
        """The journal fields for ``record``."""
        message = record.getMessage()
        if record.exc_info and record.exc_info[0] is not None:
            message += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
        elif record.stack_info:
            message += "\n" + record.stack_info
        fields = {
            "MESSAGE": message,
            "PRIORITY": str(syslog_priority(record.levelno)),
            "SYSLOG_IDENTIFIER": self.identifier,
            "LOGGER": record.name,
            "THREAD_NAME": record.threadName or "",
            "CODE_FILE": record.pathname or "",
            "CODE_LINE": str(record.lineno),
            "CODE_FUNC": record.funcName or "",
        }
        for attr, name in RECORD_FIELDS.items():
            value = getattr(record, attr, None)
            if value is not None and value != "":
                fields[name] = str(value)
        if "EDGE_DEVICE" not in fields and self.context.device:
            fields["EDGE_DEVICE"] = self.context.device
        if "EDGE_CMD_ID" not in fields and record.name.startswith("edge.commands") and record.args:
            args = record.args if isinstance(record.args, tuple) else ()
            cmd_id = next((a for a in args if isinstance(a, str) and _UUID.match(a)), None)
            if cmd_id is not None:
                fields["EDGE_CMD_ID"] = cmd_id
        return fields

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.send(encode_journal_fields(self.fields(record)))
        except Exception:
            self.handleError(record)

    def send(self, data: bytes) -> None:
        """One entry to journald; one too large for a datagram goes in a sealed memfd passed along."""
        try:
            self._sock.sendto(data, str(self.socket_path))
            return
        except OSError as exc:
            if exc.errno not in (errno.EMSGSIZE, errno.ENOBUFS):  # too large for a datagram
                raise
        fd = os.memfd_create("journal-entry", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.write(fd, data)
            with contextlib.suppress(OSError):
                # journald wants the memfd sealed, so the entry cannot change under it.
                seals = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL
                fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
            rights = array.array("i", [fd])
            self._sock.sendmsg([], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)], 0, str(self.socket_path))
        finally:
            os.close(fd)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.close()
        super().close()


def journal_stream_is_stderr(env: Mapping[str, str] | None = None) -> bool:
    """Whether stderr is the journal stream systemd connected (``$JOURNAL_STREAM`` = device:inode of
    stderr, as ``systemd.exec(5)`` says to check: a child that redirected stderr is not)."""
    environ = os.environ if env is None else env
    value = environ.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(part) for part in value.split(":"))
        st = os.fstat(2)
    except (ValueError, OSError):
        return False
    return st.st_dev == dev and st.st_ino == ino


def use_journal_if_attached(socket_path: Path = JOURNAL_SOCKET) -> JournalHandler | None:
    """Under systemd (stderr is the journal stream and journald's socket exists), replace the root
    logger's handlers with a :class:`JournalHandler` at the same level; None otherwise."""
    if not journal_stream_is_stderr() or not socket_path.exists():
        return None
    root = logging.getLogger()
    handler = JournalHandler(socket_path)
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    return handler


def journal_handler() -> JournalHandler | None:
    """The :class:`JournalHandler` on the root logger, if one was installed."""
    return next((h for h in logging.getLogger().handlers if isinstance(h, JournalHandler)), None)


def set_journal_device(device: str) -> None:
    """Name the device in ``EDGE_DEVICE`` of every journal entry from now on (no-op without a journal)."""
    handler = journal_handler()
    if handler is not None:
        handler.context.device = device
