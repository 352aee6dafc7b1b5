"""The rating panel interface that every backend implements (device over backend, as in gpiozero).

The rating service holds a :class:`Panel` and never knows whether buttons are GPIO pins, a serial
microcontroller or a simulator::

    with open_panel(load_profile("gpio-4btn-rpi")) as panel:
        panel.start(on_press=service.on_press, on_event=service.on_panel_event)
        ...

    def on_press(press: Press) -> None:       # runs on the panel's own dispatcher thread
        store.commit(rating_for(press))        # durable first ...
        panel.acknowledge(press)               # ... then acknowledged (serial: ACK <mseq>)
        panel.set_led(press.button, "thanks")  # ... then thanked

Callbacks run one at a time, in arrival order, on one dispatcher thread that belongs to the panel, so
``on_press`` may block while the service commits: hardware reading goes on meanwhile. If ``on_press``
raises, the press is *not* acknowledged; a serial MCU repeats it and it is delivered again.
"""

from __future__ import annotations

import logging
import queue
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any, Literal, Self

from drivers.panel.protocol import LED_MODES, MAX_BEEP_MS, LedMode, ParserCounters
from drivers.profiles import ButtonSpec, Profile
from drivers.resources import Resources, process_resources
from edge.exceptions import StoreFull

log = logging.getLogger(__name__)

PanelEventKind = Literal["connected", "disconnected", "stuck", "released", "firmware_mismatch", "error", "done"]


@dataclass(frozen=True)
class Press:
    """One press of a rating button, as delivered to ``on_press``."""

    button: int
    """Button number, 1-based, as in the profile's ``buttons`` list."""
    key: str | None
    """A durable identity of the press for deduplication across host restarts: for serial panels
    ``"<button>:<mseq>:<uptime_ms>"`` (a repeated BTN frame carries the same values); None for GPIO."""
    mseq: int | None
    """The MCU's press sequence number (serial), None for GPIO."""
    received_at: float
    """``time.monotonic()`` when the host first received the press."""
    uptime_ms: int | None = None
    """The MCU's uptime at the press (serial), None for GPIO."""


@dataclass(frozen=True)
class PanelEvent:
    """Something about the panel itself (not a rating).

    kinds and their ``detail``:
    ``connected`` (port, fw, model, buttons; GPIO: backend), ``disconnected`` (port, reason:
    ``silence`` | ``port_lost`` | ``not_found``, error), ``stuck`` / ``released`` (button),
    ``firmware_mismatch`` (problems: list of sentences, proto, fw, model, buttons), ``error`` (code,
    text), ``done`` (the officer's done button was pressed).
    """

    kind: PanelEventKind
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class PanelStats:
    """Counters since the panel was opened. Fields a backend does not use stay 0."""

    presses: int = 0
    """Presses handed to ``on_press``."""
    acks: int = 0
    """Presses acknowledged by the service (serial: ``ACK`` frames sent for them)."""
    callback_errors: int = 0
    """``on_press`` / ``on_event`` raised (the press was not acknowledged)."""
    stuck: int = 0
    """Stuck-button reports."""
    done: int = 0
    """Officer done-button presses (GPIO)."""
    duplicates: int = 0
    """Serial: repeated BTN frames of a press already delivered (not delivered again)."""
    reacks: int = 0
    """Serial: ACK re-sent because the MCU repeated an acknowledged press (the first ACK was lost)."""
    deferred_acks: int = 0
    """Serial: ACK held back because the port was reopened or the MCU restarted since the press; it is
    sent when the MCU repeats the press (an ACK must never reach a different press with that mseq)."""
    unknown_buttons: int = 0
    """Serial: BTN frames for a button the profile does not have (acknowledged and dropped)."""
    mcu_errors: int = 0
    """Serial: ERR frames received."""
    mcu_restarts: int = 0
    """Serial: MCU restarts detected (heartbeat uptime went backwards)."""
    hellos: int = 0
    """Serial: HELLO frames received."""
    connects: int = 0
    """``connected`` transitions."""
    disconnects: int = 0
    """``disconnected`` transitions."""
    port_opens: int = 0
    """Serial: times the port was opened."""
    reconnects: int = 0
    """Serial: times the port was opened again after the first."""
    port_errors: int = 0
    """Serial: failures to open, or reads that failed (device gone)."""
    write_errors: int = 0
    """Serial: writes that failed (device gone, write timeout)."""
    frames: ParserCounters = field(default_factory=ParserCounters)
    """Serial: what the frame parser accepted and dropped (bad CRC, grammar, overlong...)."""


PressCallback = Callable[[Press], None]
EventCallback = Callable[[PanelEvent], None]


class Panel(ABC):
    """A rating panel: buttons in, LEDs and a buzzer out. Subclasses are the backends.

    The constructor reserves the panel's resources (raising :exc:`ResourceBusy` naming the holder) and
    may open hardware; :meth:`start` begins delivering presses and events; :meth:`close` stops
    everything and releases the resources. A panel is a context manager.
    """

    def __init__(self, profile: Profile, *, resources: Resources | None = None, holder: str = "panel") -> None:
        self.profile = profile
        self.holder = holder
        self._resources = resources if resources is not None else process_resources()
        self._lock = threading.Lock()  # guards stats and lifecycle flags
        self._stats = PanelStats()
        self._connected = False
        self._reported: bool | None = None  # the connection state last reported by an event
        self._started = False
        self._closed = False
        self._on_press: PressCallback | None = None
        self._on_event: EventCallback | None = None
        self._queue: queue.SimpleQueue[Press | PanelEvent | None] = queue.SimpleQueue()
        self._dispatcher: threading.Thread | None = None
        # Presses refused since the store last took one because the disk is full (dispatcher thread).
        self._refused_full = 0

    # -- public API --------------------------------------------------------------------------------

    @property
    def buttons(self) -> tuple[ButtonSpec, ...]:
        """The profile's buttons (score, label, Vietnamese text); button ``n`` is ``buttons[n - 1]``."""
        return tuple(self.profile.buttons)

    @property
    def connected(self) -> bool:
        """Whether the panel is present and talking (GPIO: always, once opened)."""
        return self._connected

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._closed

    @property
    def dispatcher_thread(self) -> threading.Thread | None:
        """The thread presses and events are delivered on, from :meth:`start` until :meth:`close`."""
        return self._dispatcher

    @property
    def stats(self) -> PanelStats:
        """A snapshot of the counters."""
        with self._lock:
            return replace(self._stats, frames=replace(self._stats.frames))

    def start(self, on_press: PressCallback, on_event: EventCallback | None = None) -> None:
        """Begin delivering presses to ``on_press`` and panel events to ``on_event``.

        Both run on the panel's dispatcher thread, one at a time, in arrival order.
        """
        with self._lock:
            if self._closed:
                raise RuntimeError("panel is closed")
            if self._started:
                raise RuntimeError("panel already started")
            self._started = True
        self._on_press = on_press
        self._on_event = on_event
        self._dispatcher = threading.Thread(target=self._dispatch, name=f"{self.holder}-dispatch", daemon=True)
        self._dispatcher.start()
        self._start()

    @abstractmethod
    def acknowledge(self, press: Press) -> None:
        """Tell the panel that ``press`` is committed to disk. Call it only after the commit.

        Serial: sends ``ACK <mseq>`` so the MCU stops repeating the press. GPIO: nothing to do.
        Never raises for transport trouble: an ACK that cannot be sent now is sent when the MCU
        repeats the press.
        """

    @abstractmethod
    def set_led(self, button: int | Literal["all"], mode: LedMode) -> None:
        """Set a button's LED (or every LED) to ``off``, ``on``, ``blink`` or ``thanks``.

        ``thanks`` is the thank-you pattern (a few blinks, then off). Best effort: transport trouble is
        logged and counted, not raised. Raises ValueError for a button or mode that does not exist.
        """

    @abstractmethod
    def beep(self, ms: int) -> None:
        """Sound the buzzer for ``ms`` milliseconds (1..5000); a no-op if the panel has none."""

    def close(self) -> None:
        """Stop reading, deliver what was already received, release the resources. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._close()
        finally:
            self._connected = False
            self._queue.put(None)
            if self._dispatcher is not None and self._dispatcher is not threading.current_thread():
                self._dispatcher.join(timeout=10)
                if self._dispatcher.is_alive():
                    log.warning("%s: a callback is still running after close()", self.holder)
            self._resources.release_all(self.holder)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- for backends ------------------------------------------------------------------------------

    @abstractmethod
    def _start(self) -> None:
        """Begin reading the hardware (called once, after the dispatcher runs)."""

    @abstractmethod
    def _close(self) -> None:
        """Stop reading and close the hardware (called once)."""

    def _press_failed(self, press: Press) -> None:  # noqa: B027 - optional hook
        """``on_press`` raised for ``press``; a backend may arrange for it to be delivered again."""

    def _on_full(self, press: Press, exc: StoreFull) -> None:
        self._refused_full += 1
        if self._refused_full == 1:
            log.error(
                "%s: press on button %s not taken (%s); it is not acknowledged, and later ones are counted "
                "until the store takes presses again",
                self.holder,
                press.button,
                exc,
            )
        else:
            log.debug("%s: press on button %s (key %s) refused: disk full", self.holder, press.button, press.key)

    def _deliver_press(self, press: Press) -> None:
        self._queue.put(press)

    def _deliver_event(self, event: PanelEvent) -> None:
        if event.kind == "connected" or event.kind == "disconnected":
            with self._lock:
                now_connected = event.kind == "connected"
                if self._reported == now_connected:
                    return  # report transitions only (and the first state, e.g. absent at boot)
                self._reported = self._connected = now_connected
                if now_connected:
                    self._stats.connects += 1
                else:
                    self._stats.disconnects += 1
        log.info("%s: %s %s", self.holder, event.kind, event.detail)
        self._queue.put(event)

    def _count(self, **deltas: int) -> None:
        with self._lock:
            for name, delta in deltas.items():
                setattr(self._stats, name, getattr(self._stats, name) + delta)

    def _check_led_args(self, button: int | Literal["all"], mode: str) -> None:
        if mode not in LED_MODES:
            raise ValueError(f"LED mode must be one of {', '.join(LED_MODES)}, got {mode!r}")
        if button != "all" and not (isinstance(button, int) and 1 <= button <= len(self.profile.buttons)):
            raise ValueError(f"button must be 1..{len(self.profile.buttons)} or 'all', got {button!r}")

    @staticmethod
    def _check_beep_ms(ms: int) -> None:
        if not 1 <= ms <= MAX_BEEP_MS:
            raise ValueError(f"beep must be 1..{MAX_BEEP_MS} ms, got {ms}")

    def _dispatch(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, Press):
                self._count(presses=1)
                try:
                    assert self._on_press is not None
                    self._on_press(item)
                except StoreFull as exc:
                    # Refused for a full disk: said once, with the reason and no traceback; an MCU
                    # repeats each press until it is taken, so the rest are only counted.
                    self._on_full(item, exc)
                    self._count(callback_errors=1)
                    self._press_failed(item)
                except Exception:
                    # A failed commit must not stop the panel; the press stays unacknowledged.
                    log.exception("%s: on_press failed for button %s (key %s)", self.holder, item.button, item.key)
                    self._count(callback_errors=1)
                    self._press_failed(item)
                else:
                    if self._refused_full:
                        log.warning(
                            "%s: presses are taken again; %d were refused while the disk was full (an MCU's "
                            "repeats of one press included)",
                            self.holder,
                            self._refused_full,
                        )
                        self._refused_full = 0
            elif self._on_event is not None:
                try:
                    self._on_event(item)
                except Exception:
                    log.exception("%s: on_event failed for %s", self.holder, item.kind)
                    self._count(callback_errors=1)
