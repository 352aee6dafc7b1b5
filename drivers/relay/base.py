"""The relay bank that every relay board backend sits under (device over backend, as in gpiozero).

The broadcast service holds a :class:`RelayBank` and never knows whether the relays are GPIO pins,
an LCUS USB board or a Modbus RTU board::

    with open_relays("lcus-4ch", port="/dev/serial/by-id/usb-1a86_USB_Serial-if00-port0") as bank:
        bank.amplifier(True)               # every relay was opened when the bank was made
        time.sleep(bank.warm_up_s)
        bank.set_zones(["zone-1", "zone-3"])
        player.play_source(source)
        bank.set_zones([])
        ...                                # bank.amplifier(False) once idle_off_s passed without an item

The bank, not the backend, holds the state: which relays are closed, since when the amplifier has
been on, what went wrong. A backend only switches one relay and, if the board can, reads them back.

Safety. The bank's own watchdog thread opens every relay when the amplifier has been on for
``max_on_s`` without a break, whatever the caller is doing (it may be hung), then calls
``on_safety_cut``. Each backend bounds its I/O with timeouts, so the bank's lock is never held for
long and the watchdog always gets it. An ``all_off()`` that fails (the board does not answer) is
retried by the watchdog every few seconds until it succeeds or the caller closes a relay again, so a
board that comes back after a fault, or that a previous process left switched on, is opened as soon
as it answers.

Faults. An operation the board does not carry out raises :exc:`RelayFault` with a sentence a
technician can act on, and :attr:`RelayBank.problem` holds that sentence until an operation succeeds
again. Callbacks (``on_change``, ``on_safety_cut``) run one at a time on the bank's notifier thread,
so a slow callback never delays switching and never blocks the watchdog.
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any, Self

from drivers.relay.profile import AMPLIFIER, RelayProfile
from drivers.resources import Resources
from edge.exceptions import RelayFault

log = logging.getLogger(__name__)

#: Seconds between the watchdog's attempts to open every relay after an ``all_off()`` failed.
OFF_RETRY_S = 2.0

ChangeCallback = Callable[[str, bool], None]
CutCallback = Callable[[str], None]


class RelayBackend(ABC):
    """How one kind of board switches its relays. The bank calls a backend from one thread at a time.

    The constructor reserves the backend's resources (raising :exc:`ResourceBusy` naming the holder);
    :meth:`close` gives back the hardware, the bank releases the reservations.
    """

    def __init__(self, profile: RelayProfile, *, resources: Resources, holder: str) -> None:
        self.profile = profile
        self.resources = resources
        self.holder = holder

    @property
    @abstractmethod
    def where(self) -> str:
        """Where the board is, for messages: the serial port, or ``GPIO``."""

    @abstractmethod
    def switch(self, relay: str, closed: bool) -> None:
        """Close (``True``) or open one relay, by name. Raises :exc:`RelayFault` if the board cannot be reached."""

    def read(self) -> dict[str, bool]:
        """Every relay's state as the board reports it (closed: ``True``). Raises :exc:`RelayFault`.

        Called only when the profile says ``readback: true``.
        """
        raise RelayFault(f"the {self.profile.kind} relay board cannot report its relays")

    @abstractmethod
    def close(self) -> None:
        """Give back the hardware (port, pins). Idempotent."""


@dataclass
class RelayStats:
    """Counters since the bank was opened."""

    switches: int = 0
    """Relay writes the board accepted."""
    faults: int = 0
    """Operations that raised :exc:`RelayFault`."""
    safety_cuts: int = 0
    """Times the maximum on-time opened every relay."""
    off_retries: int = 0
    """``all_off()`` attempts the watchdog made after one failed."""


class RelayBank:
    """A loudspeaker's relays: the amplifier's power relay and the zone relays.

    Made by :func:`drivers.relay.open_relays`. Construction opens every relay (a previous process may
    have left some closed); if the board does not answer then, :attr:`problem` says so and the
    watchdog keeps trying. A bank is a context manager; :meth:`close` is idempotent.
    """

    def __init__(
        self,
        profile: RelayProfile,
        backend: RelayBackend,
        *,
        resources: Resources,
        holder: str = "relays",
        off_retry_s: float = OFF_RETRY_S,
    ) -> None:
        self.profile = profile
        self.holder = holder
        self.on_change: ChangeCallback | None = None
        """Called as ``on_change(relay, closed)`` after each relay changed (on the notifier thread)."""
        self.on_safety_cut: CutCallback | None = None
        """Called as ``on_safety_cut(reason)`` after the maximum on-time opened every relay."""
        self._backend = backend
        self._resources = resources
        self._off_retry_s = off_retry_s
        # One re-entrant lock serialises every board operation; the watchdog waits on it as a condition.
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)
        self._states = dict.fromkeys(profile.relay_names, False)
        # Relays whose real state is unknown (never written, or a fault since): written even when the
        # wanted state equals the remembered one.
        self._unsure: set[str] = set(profile.relay_names)
        self._amp_on_since: float | None = None
        self._off_pending = False
        self._next_off_retry = 0.0
        self._problem: str | None = None
        self._closed = False
        self._stats = RelayStats()
        self._notices: queue.SimpleQueue[tuple[Callable[..., None], tuple[Any, ...]] | None] = queue.SimpleQueue()
        try:
            self.all_off()
        except RelayFault as exc:
            log.warning("%s: could not open every relay at start (retrying): %s", holder, exc)
        self._notifier = threading.Thread(target=self._notify_loop, name=f"{holder}-notify", daemon=True)
        self._watchdog = threading.Thread(target=self._watch, name=f"{holder}-watchdog", daemon=True)
        self._notifier.start()
        self._watchdog.start()

    # -- what the profile says ---------------------------------------------------------------------

    @property
    def zones(self) -> tuple[str, ...]:
        """The zones' names, in profile order."""
        return self.profile.zone_names

    @property
    def warm_up_s(self) -> float:
        """Seconds from switching the amplifier on to the first sound."""
        return self.profile.warm_up_s

    @property
    def idle_off_s(self) -> float:
        """Seconds the amplifier stays on after an item, waiting for the next one."""
        return self.profile.idle_off_s

    @property
    def max_on_s(self) -> float:
        """Seconds of uninterrupted amplifier power after which every relay is opened."""
        return self.profile.max_on_s

    @property
    def where(self) -> str:
        """Where the board is: the serial port, or ``GPIO``."""
        return self._backend.where

    # -- state -------------------------------------------------------------------------------------

    @property
    def amp_on_since(self) -> float | None:
        """``time.monotonic()`` when the amplifier was switched on, None while it is off."""
        return self._amp_on_since

    @property
    def problem(self) -> str | None:
        """What is wrong with the board (e.g. ``relay board not answering on /dev/ttyUSB0``), None when fine."""
        return self._problem

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._closed

    @property
    def watchdog_thread(self) -> threading.Thread:
        """The thread that enforces the maximum on-time and retries a failed :meth:`all_off`."""
        return self._watchdog

    @property
    def notifier_thread(self) -> threading.Thread:
        """The thread ``on_change`` and ``on_safety_cut`` are called on."""
        return self._notifier

    @property
    def stats(self) -> RelayStats:
        """A snapshot of the counters."""
        with self._lock:
            return replace(self._stats)

    # -- operations --------------------------------------------------------------------------------

    def all_off(self) -> None:
        """Open every relay: the zones first, then the amplifier. Raises :exc:`RelayFault`.

        Every relay is written, whatever the bank remembers, because only the board knows for sure.
        If it fails, the watchdog tries again every few seconds until it succeeds.
        """
        with self._lock:
            self._check_open()
            self._off_pending = True
            try:
                try:
                    self._apply([(name, False) for name in self.zones], force=True, settle=False)
                except RelayFault as exc:
                    # Cutting the amplifier's power is what silences the horns: try it even when a
                    # zone relay failed, then report the first fault.
                    with contextlib.suppress(RelayFault):
                        self._apply([(AMPLIFIER, False)], force=True, settle=False)
                    self._problem = str(exc)
                    raise
                self._apply([(AMPLIFIER, False)], force=True)
            except RelayFault:
                self._next_off_retry = time.monotonic() + self._off_retry_s
                self._wake.notify_all()
                raise
            self._off_pending = False

    def amplifier(self, on: bool) -> None:
        """Switch the amplifier's power relay. Raises :exc:`RelayFault`.

        Switching it on while it is on does not restart the maximum on-time clock.
        """
        with self._lock:
            self._check_open()
            if on:
                self._off_pending = False  # the caller has taken over again
            self._apply([(AMPLIFIER, bool(on))])

    def set_zones(self, names: Collection[str]) -> None:
        """Close exactly these zones and open the others (opening first). Raises :exc:`RelayFault`.

        An unknown zone name is a ValueError, and nothing is switched.
        """
        if isinstance(names, str):
            raise ValueError(f"set_zones takes a collection of zone names, not the string {names!r}")
        wanted = set(names)
        unknown = sorted(wanted - set(self.zones))
        if unknown:
            raise ValueError(f"unknown zone {', '.join(unknown)} (this board has {', '.join(self.zones)})")
        with self._lock:
            self._check_open()
            if wanted:
                self._off_pending = False
            opening = [(z, False) for z in self.zones if z not in wanted]
            closing = [(z, True) for z in self.zones if z in wanted]
            self._apply(opening + closing)

    def states(self) -> dict[str, bool]:
        """``{"amplifier": closed, "<zone>": closed, ...}``; read from the board when its profile says it can.

        Raises :exc:`RelayFault` when a board with readback does not answer.
        """
        with self._lock:
            self._check_open()
            if self.profile.readback:
                changed: list[tuple[str, bool]] = []
                try:
                    self._take_reading(changed)
                except RelayFault as exc:
                    self._fault(exc)
                    raise
                finally:
                    self._announce(changed)
                self._fine()
            return dict(self._states)

    def close(self) -> None:
        """Open every relay (best effort), stop the threads, give back the board. Idempotent."""
        with self._lock:
            if self._closed:
                return
            try:
                self.all_off()
            except RelayFault as exc:
                log.warning("%s: could not open every relay while closing: %s", self.holder, exc)
            self._closed = True
            self._wake.notify_all()
        current = threading.current_thread()
        if self._watchdog is not current:
            self._watchdog.join(timeout=10)
        self._notices.put(None)
        if self._notifier is not current:
            self._notifier.join(timeout=10)
            if self._notifier.is_alive():
                log.warning("%s: a relay callback is still running after close()", self.holder)
        try:
            self._backend.close()
        finally:
            self._resources.release_all(self.holder)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- internals (with the lock held) ------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RelayFault(f"the relay bank on {self.where} is closed")

    def _apply(self, changes: list[tuple[str, bool]], *, force: bool = False, settle: bool = True) -> None:
        """Write ``changes`` in order, then confirm them by reading back if the board can.

        ``force`` writes relays the bank believes are already right; ``settle`` clears the problem on
        success (False: the caller has more to do before it knows).
        """
        changed: list[tuple[str, bool]] = []
        try:
            written: dict[str, bool] = {}
            for name, closed in changes:
                if not force and name not in self._unsure and self._states[name] == closed:
                    continue
                self._unsure.add(name)
                if name == AMPLIFIER and closed and self._amp_on_since is None:
                    # Start the clock before writing: a write that fails may still have closed the relay.
                    self._amp_on_since = time.monotonic()
                    self._wake.notify_all()
                self._backend.switch(name, closed)
                self._stats.switches += 1
                self._unsure.discard(name)
                written[name] = closed
                if self._states[name] != closed:
                    self._states[name] = closed
                    changed.append((name, closed))
                if name == AMPLIFIER and not closed:
                    self._amp_on_since = None
                    self._wake.notify_all()
            if written and self.profile.readback:
                self._take_reading(changed, expect=written)
        except RelayFault as exc:
            self._fault(exc)
            raise
        finally:
            self._announce(changed)
        if settle:
            self._fine()

    def _take_reading(self, changed: list[tuple[str, bool]], expect: dict[str, bool] | None = None) -> None:
        reading = self._backend.read()
        for name, closed in reading.items():
            if name not in self._states:
                continue
            self._unsure.discard(name)
            if self._states[name] != closed:
                self._states[name] = closed
                changed.append((name, closed))
        if AMPLIFIER in reading and not reading[AMPLIFIER]:
            self._amp_on_since = None
        elif reading.get(AMPLIFIER) and self._amp_on_since is None:
            self._amp_on_since = time.monotonic()  # found on: the safety clock starts now
            self._wake.notify_all()
        for name, closed in (expect or {}).items():
            if reading.get(name) != closed:
                self._unsure.add(name)
                state = "closed" if reading.get(name) else "open"
                raise RelayFault(
                    f"relay {name} did not {'close' if closed else 'open'}: the board on {self.where} reads it {state}"
                )

    def _fault(self, exc: RelayFault) -> None:
        # After a fault nothing the bank remembers can be trusted: the board may have missed writes,
        # or lost power with its USB cable and come back with every relay open. Each relay is written
        # again the next time an operation names it.
        self._unsure.update(self._states)
        self._stats.faults += 1
        message = str(exc)
        if message != self._problem:
            log.warning("%s: %s", self.holder, message)
        self._problem = message

    def _fine(self) -> None:
        if self._problem is not None:
            log.info("%s: the relay board on %s answers again", self.holder, self.where)
            self._problem = None

    def _announce(self, changed: list[tuple[str, bool]]) -> None:
        callback = self.on_change
        if callback is not None:
            for name, closed in changed:
                self._notices.put((callback, (name, closed)))

    # -- the watchdog thread -----------------------------------------------------------------------

    def _watch(self) -> None:
        with self._wake:
            while not self._closed:
                now = time.monotonic()
                timeout = math.inf
                if self._amp_on_since is not None:
                    due = self._amp_on_since + self.max_on_s
                    if now >= due:
                        self._safety_cut(now - self._amp_on_since)
                        continue
                    timeout = due - now
                if self._off_pending:
                    if now >= self._next_off_retry:
                        self._retry_off()
                        continue
                    timeout = min(timeout, self._next_off_retry - now)
                self._wake.wait(None if timeout == math.inf else timeout)

    def _safety_cut(self, on_for: float) -> None:
        self._stats.safety_cuts += 1
        reason = (
            f"the amplifier was on for {on_for:.0f} s without a break (max_on_s {self.max_on_s:g} s): "
            "every relay opened"
        )
        log.warning("%s: safety cut: %s", self.holder, reason)
        try:
            self.all_off()
        except RelayFault as exc:
            reason += f"; the board did not do it ({exc}), retrying every {self._off_retry_s:g} s"
        # The clock has done its job; an all_off() still pending is the retry loop's business.
        self._amp_on_since = None
        callback = self.on_safety_cut
        if callback is not None:
            self._notices.put((callback, (reason,)))

    def _retry_off(self) -> None:
        self._stats.off_retries += 1
        try:
            self.all_off()
        except RelayFault as exc:
            log.debug("%s: all relays off, retry failed: %s", self.holder, exc)
        else:
            log.info("%s: every relay is open now", self.holder)

    # -- the notifier thread -----------------------------------------------------------------------

    def _notify_loop(self) -> None:
        while True:
            item = self._notices.get()
            if item is None:
                return
            callback, args = item
            try:
                callback(*args)
            except Exception:  # a broken callback must not stop later notices
                log.exception("%s: relay callback %r failed", self.holder, callback)
