"""Liveness of the loops a process stands on, and what to do when one of them dies or hangs.

A daemon thread that dies takes nothing down with it: the process keeps running, systemd sees it
alive, and the work of that thread (sending events, receiving commands, storing) silently stops.
The :class:`Supervisor` checks every loop about once a second; the first one found dead is logged
("uplink thread died: <exception>") and reported, and the process ends non-zero so that systemd
starts it again. Restarting a thread in place was not chosen: the state it died with (a half-sent
window, a connection in an unknown state) is exactly what a clean start gets rid of, and the
outbox makes a restart lose nothing.

A thread that is alive but stuck is as bad as a dead one. A loop that must keep making rounds
stamps a :class:`Heartbeat` at each one; a heartbeat older than its bound (:data:`HUNG_AFTER_S`)
makes the supervisor report the loop as hung ("mqtt-link hung: connecting to ... has taken 301 s"),
with the same outcome.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

#: How long a loop that stamps a :class:`Heartbeat` (the MQTT link, the uplink) may go without
#: finishing a round before it counts as hung, and the daemon is restarted.
#:
#: Well above any normal blocking. The longest is the link's connection attempt, during which it
#: stamps nothing: a DNS lookup (glibc gives up after about 30 s with three name servers), the TCP
#: connect and the TLS handshake (paho bounds each read by its 5 s connect timeout), then the wait
#: for CONNACK, which paho bounds by the keepalive (30 s by default): under two minutes in all. A
#: broker that accepts the connection and then never answers is therefore "offline" (the attempt
#: fails and is retried) unless ``mqtt.keepalive_s`` is set beyond this bound, when the attempt
#: outlasts it and the daemon is restarted. The uplink's rounds wait at most its poll interval (1 s)
#: plus one store transaction; an fsync on a worn SD card takes seconds, not minutes.
#:
#: And low enough to be harmless when the broker stays silent for hours. systemd/commune-edge.service
#: has Restart=always, RestartSec=5s and StartLimitBurst=10 in StartLimitIntervalSec=10min: more
#: than 10 starts within 10 minutes leaves the unit failed (no ratings taken until someone comes).
#: A hang costs at least this bound plus RestartSec between two starts, 305 s, so a device facing a
#: silent broker starts at most twice in any 10 minutes, leaving 8 starts for other trouble; the
#: limit would need a cycle under 60 s. Between restarts the rating service commits as usual (it
#: never waits for the link). A restart takes RestartSec plus the start, a few seconds in which a
#: serial panel keeps repeating its unacknowledged presses (committed once the daemon is back) and a
#: GPIO panel's presses go unseen, as at any restart: at this bound, about 3 % of the time.
HUNG_AFTER_S = 300.0


#: What each thread that died of an uncaught exception died of. Python reports those through
#: ``threading.excepthook``; the supervisor listens there (and passes them on to the hook it found,
#: which prints the traceback), so every thread can say what it died of, its own or not.
_failures: weakref.WeakKeyDictionary[threading.Thread, BaseException] = weakref.WeakKeyDictionary()
_passed_on: Callable[[threading.ExceptHookArgs], Any] | None = None


def _record_failure(args: threading.ExceptHookArgs) -> None:
    if args.thread is not None and args.exc_value is not None:
        _failures[args.thread] = args.exc_value
    if _passed_on is not None:
        _passed_on(args)


def record_thread_failures() -> None:
    """Start recording what threads die of (idempotent; the supervisor calls it)."""
    global _passed_on
    if threading.excepthook is not _record_failure:
        _passed_on = threading.excepthook
        threading.excepthook = _record_failure


def thread_alive(thread: threading.Thread | None) -> bool:
    """Whether ``thread`` was started and is still running (None, not yet started: not alive)."""
    return thread is not None and thread.is_alive()


def thread_failure(thread: threading.Thread | None) -> BaseException | None:
    """The exception ``thread`` died of, if it died of one (see :func:`record_thread_failures`)."""
    return None if thread is None else _failures.get(thread)


def _no_failure() -> BaseException | None:
    return None


class Heartbeat:
    """When a loop last finished a round, stamped by the loop itself at every round (one clock read).

    ``doing`` says what the loop went on to do that may take long (``"connecting to ..."``), for the
    report when it does not come back within ``stale_after_s``.
    """

    __slots__ = ("at", "doing", "stale_after_s")

    def __init__(self, stale_after_s: float = HUNG_AFTER_S) -> None:
        self.stale_after_s = stale_after_s
        self.at = time.monotonic()
        self.doing = ""

    def beat(self, doing: str = "") -> None:
        """A round is done; ``doing``: what comes next, if it may take long."""
        self.at = time.monotonic()
        self.doing = doing

    def hung(self) -> str | None:
        """Why the loop counts as hung (its last round is older than the bound); None while it is not."""
        age = time.monotonic() - self.at
        if age <= self.stale_after_s:
            return None
        return f"{self.doing or 'its round'} has taken {age:.0f} s (the bound is {self.stale_after_s:.0f} s)"


@dataclass(frozen=True)
class Loop:
    """One loop a part of the process stands on, as the supervisor watches it: its ``name`` in reports,
    ``alive()`` (whether it runs), ``failure()`` (what it died of) and, for a loop that must keep
    making rounds, its ``heartbeat``."""

    name: str
    alive: Callable[[], bool]
    failure: Callable[[], BaseException | None] = _no_failure
    heartbeat: Heartbeat | None = None


def thread_loop(name: str, thread: Callable[[], threading.Thread | None], *, may_end: bool = False) -> Loop:
    """A :class:`Loop` for a service's thread, the one ``thread()`` returns (looked up at every check).

    No thread (the configuration needs none, or it is not made yet) and a thread not started yet are
    not failures. A thread that died of an exception is one; so is one that ended without an exception
    unless ``may_end`` (a thread with a job that finishes, e.g. opening the panel once): the others run
    until their service stops, and the supervisor stops before the services do.
    """

    def alive() -> bool:
        t = thread()
        if t is None or t.ident is None or t.is_alive():
            return True
        return may_end and thread_failure(t) is None

    return Loop(name, alive, lambda: thread_failure(thread()))


class Supervisor:
    """Checks the watched loops every ``interval_s`` on a thread of its own; ``failed`` is set, with
    ``reason``, when one is found dead. ``chores`` run on the same thread after each check (small
    periodic work that must not run on the network thread, e.g. recording the link state)."""

    def __init__(self, interval_s: float = 1.0) -> None:
        record_thread_failures()
        self.interval_s = interval_s
        self.failed = threading.Event()
        self.reason = ""
        self._watched: list[Loop] = []
        self._chores: list[tuple[str, Callable[[], None]]] = []
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(
        self,
        name: str,
        alive: Callable[[], bool],
        failure: Callable[[], BaseException | None] | None = None,
        *,
        heartbeat: Heartbeat | None = None,
    ) -> None:
        """Watch one loop: ``alive()`` says whether it runs, ``failure()`` what it died of; with a
        ``heartbeat``, it is hung when that goes stale."""
        self._watched.append(Loop(name, alive, failure or _no_failure, heartbeat))

    def watch_loops(self, loops: Iterable[Loop]) -> None:
        """Watch each of ``loops`` (a service's, see :meth:`edge.services.Service.loops`)."""
        self._watched.extend(loops)

    def watch_thread(self, name: str, thread: Callable[[], threading.Thread | None]) -> None:
        """Watch the thread ``thread()`` returns (looked up at every check: it may be replaced)."""
        self.watch(name, lambda: thread_alive(thread()), lambda: thread_failure(thread()))

    def chore(self, name: str, fn: Callable[[], None]) -> None:
        """Run ``fn()`` on the supervisor's thread after every round."""
        self._chores.append((name, fn))

    def wake(self) -> None:
        """Do a round now rather than at the next interval (from any thread; never blocks)."""
        self._wake.set()

    def check(self) -> str | None:
        """The first dead or hung loop, as "<name> thread died: <exception>" or "<name> hung: <what>
        has taken <n> s ..."; None while all run."""
        for w in self._watched:
            try:
                if w.alive():
                    hung = w.heartbeat.hung() if w.heartbeat is not None else None
                    if hung is None:
                        continue
                    return f"{w.name} hung: {hung}"
                exc = w.failure()
            except Exception as err:  # a broken liveness check is itself a failure to report
                exc = err
            what = f"{type(exc).__name__}: {exc}" if exc is not None else "it ended without an exception"
            return f"{w.name} thread died: {what}"
        return None

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            reason = self.check()
            if reason is not None:
                self.reason = reason
                log.critical("%s", reason)
                self.failed.set()
                return
            for name, fn in self._chores:
                try:
                    fn()
                except Exception:
                    log.exception("%s failed", name)

    def alive(self) -> bool:
        return thread_alive(self._thread)

    def start(self) -> Supervisor:
        self._thread = threading.Thread(target=self._run, name="supervisor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)
