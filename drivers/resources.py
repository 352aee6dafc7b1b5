"""One place that reserves hardware resources: GPIO pins, serial ports, cameras, audio devices.

DESIGN.md §2, "one writer per resource". The same :class:`Resources` registry is used twice:

* at configuration-validation time, where nothing is opened: the config layer reserves every pin and
  port the configuration names, with the key path as holder, and turns each :exc:`ResourceBusy` into
  a problem (``panel.buttons[1].pin: GPIO 17 is used by panel.buttons[0].pin``);
* at run time, where every driver reserves what it is about to open and releases it on ``close()``.

A clash names the current holder. A resource may be used by several holders only if *every* holder
marked it shared (ESPHome's ``allow_other_uses``), e.g. one LED ring lit by two devices.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Literal

from edge.exceptions import ResourceBusy

log = logging.getLogger(__name__)

ResourceKind = Literal["gpio", "serial", "camera", "audio"]

_LABELS: dict[str, str] = {
    "gpio": "GPIO {}",
    "serial": "serial port {}",
    "camera": "camera {}",
    "audio": "audio device {}",
}


def describe(kind: ResourceKind, name: str | int) -> str:
    """How a resource is named in messages: ``GPIO 17``, ``serial port /dev/ttyUSB0``."""
    return _LABELS[kind].format(name)


@dataclass
class _Reservation:
    holders: list[str] = field(default_factory=list)
    shared: bool = False


class Resources:
    """A registry of reserved resources. Thread-safe; opens nothing.

    Resources are identified by ``(kind, name)``; GPIO names are BCM numbers (``17``), serial names are
    device paths as configured (``/dev/serial/by-id/...``).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[tuple[str, str], _Reservation] = {}

    def reserve(self, kind: ResourceKind, name: str | int, holder: str, *, shared: bool = False) -> None:
        """Reserve ``(kind, name)`` for ``holder``.

        Reserving again for the same holder is a no-op. Raises :exc:`ResourceBusy` naming the current
        holder if someone else holds it, unless both this and every earlier reservation are shared.
        """
        if kind not in _LABELS:
            raise ValueError(f"unknown resource kind {kind!r}")
        key = (kind, str(name))
        with self._lock:
            res = self._held.get(key)
            if res is None:
                self._held[key] = _Reservation([holder], shared)
                return
            if holder in res.holders:
                return
            if not (shared and res.shared):
                raise ResourceBusy(f"{describe(kind, name)} is used by {res.holders[0]}")
            res.holders.append(holder)

    def release(self, kind: ResourceKind, name: str | int, holder: str) -> None:
        """Release ``holder``'s reservation of ``(kind, name)``; releasing twice is harmless."""
        key = (kind, str(name))
        with self._lock:
            res = self._held.get(key)
            if res is None or holder not in res.holders:
                return
            res.holders.remove(holder)
            if not res.holders:
                del self._held[key]

    def release_all(self, holder_prefix: str) -> None:
        """Release every reservation whose holder is ``holder_prefix`` or starts with it plus ``.``/``[``.

        A driver reserves under key paths such as ``panel.buttons[0].pin``; ``release_all("panel")``
        frees them all when the panel closes.
        """
        with self._lock:
            for key in list(self._held):
                res = self._held[key]
                res.holders = [h for h in res.holders if not _under(h, holder_prefix)]
                if not res.holders:
                    del self._held[key]

    def holder(self, kind: ResourceKind, name: str | int) -> str | None:
        """The first holder of ``(kind, name)``, or None if it is free."""
        with self._lock:
            res = self._held.get((kind, str(name)))
            return res.holders[0] if res else None

    def held(self) -> dict[str, list[str]]:
        """Every reservation as ``{"GPIO 17": ["panel.buttons[0].pin"], ...}`` (for ``edge status``)."""
        with self._lock:
            return {describe(k, n): list(r.holders) for (k, n), r in self._held.items()}  # type: ignore[arg-type]


def _under(holder: str, prefix: str) -> bool:
    return holder == prefix or holder.startswith((prefix + ".", prefix + "["))


_process_resources = Resources()


def process_resources() -> Resources:
    """The registry shared by every driver of this process, used when a driver is given none.

    The daemon may pass its own registry explicitly; tests usually pass a fresh ``Resources()``.
    """
    return _process_resources
