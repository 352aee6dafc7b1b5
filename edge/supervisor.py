"""Liveness of the loops a process stands on, and what to do when one of them dies.

A daemon thread that dies takes nothing down with it: the process keeps running, systemd sees it
alive, and the work of that thread (sending events, receiving commands, storing) silently stops.
The :class:`Supervisor` checks every loop about once a second; the first one found dead is logged
("uplink thread died: <exception>") and reported, and the process ends non-zero so that systemd
starts it again. Restarting a thread in place was not chosen: the state it died with (a half-sent
window, a connection in an unknown state) is exactly what a clean start gets rid of, and the
outbox makes a restart lose nothing.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


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


@dataclass
class _Watched:
    name: str
    alive: Callable[[], bool]
    failure: Callable[[], BaseException | None]


class Supervisor:
    """Checks the watched loops every ``interval_s`` on a thread of its own; ``failed`` is set, with
    ``reason``, when one is found dead. ``chores`` run on the same thread after each check (small
    periodic work that must not run on the network thread, e.g. recording the link state)."""

    def __init__(self, interval_s: float = 1.0) -> None:
        record_thread_failures()
        self.interval_s = interval_s
        self.failed = threading.Event()
        self.reason = ""
        self._watched: list[_Watched] = []
        self._chores: list[tuple[str, Callable[[], None]]] = []
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(
        self, name: str, alive: Callable[[], bool], failure: Callable[[], BaseException | None] | None = None
    ) -> None:
        """Watch one loop: ``alive()`` says whether it runs, ``failure()`` what it died of."""
        self._watched.append(_Watched(name, alive, failure or (lambda: None)))

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
        """The first dead loop, as "<name> thread died: <exception>"; None while all run."""
        for w in self._watched:
            try:
                if w.alive():
                    continue
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
