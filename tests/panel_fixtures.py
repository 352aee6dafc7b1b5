"""Helpers shared by the panel tests: a recorder for presses and events, waiting, test profiles.

Waiting is done with timeouts generous enough for a loaded CI machine; tests assert what happened,
never how long it took.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from drivers.panel.base import Panel, PanelEvent, Press
from drivers.profiles import GpioProfile, SerialProfile, load_profile, parse_profile

WAIT = 10.0  # seconds; only ever reached when a test is about to fail


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT, interval: float = 0.005) -> bool:
    """Poll ``predicate`` until it holds; False if it never did within ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


class Recorder:
    """Plays the rating service: records presses and events, and (by default) acknowledges each press.

    ``commit`` may be replaced to make a commit block or fail.
    """

    def __init__(self, panel: Panel | None = None, *, ack: bool = True) -> None:
        self.panel = panel
        self.ack = ack
        self.presses: list[Press] = []
        self.events: list[PanelEvent] = []
        self.commit: Callable[[Press], Any] = lambda press: None
        self._cond = threading.Condition()

    def on_press(self, press: Press) -> None:
        self.commit(press)  # may block or raise, like a real commit
        with self._cond:
            self.presses.append(press)
            self._cond.notify_all()
        if self.ack and self.panel is not None:
            self.panel.acknowledge(press)

    def on_event(self, event: PanelEvent) -> None:
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()

    def start(self, panel: Panel) -> Recorder:
        self.panel = panel
        panel.start(self.on_press, self.on_event)
        return self

    def wait_presses(self, n: int, timeout: float = WAIT) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: len(self.presses) >= n, timeout)

    def wait_event(self, kind: str, count: int = 1, timeout: float = WAIT) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.kinds().count(kind) >= count, timeout)

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]

    def last(self, kind: str) -> PanelEvent:
        return [e for e in self.events if e.kind == kind][-1]


def fast_serial_profile(heartbeat_ms: int = 1000, **changes: Any) -> SerialProfile:
    """The shipped 4-button serial profile with 50 ms repeats (quick tests).

    The heartbeat stays at 1 s unless a test is about the watchdog: a short one would let a loaded
    CI machine see a false silence in tests about something else.
    """
    data = load_profile("serial-4btn").model_dump(mode="json")
    data["heartbeat_ms"] = heartbeat_ms
    data["mcu_config"].update(hb_ms=heartbeat_ms, repeat_ms=50)
    data.update(changes)
    prof = parse_profile(data, source="fast-serial-4btn")
    assert isinstance(prof, SerialProfile)
    return prof


def gpio_profile(name: str = "gpio-4btn-rpi", **changes: Any) -> GpioProfile:
    """A shipped GPIO profile with some fields changed (e.g. a short stuck time or thanks pattern)."""
    data = load_profile(name).model_dump(mode="json", exclude_none=True)
    data.update(changes)
    prof = parse_profile(data, source=f"test-{name}")
    assert isinstance(prof, GpioProfile)
    return prof
