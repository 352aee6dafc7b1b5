"""Rating panel drivers: one :class:`Panel` interface, a GPIO backend and a serial-MCU backend.

:func:`open_panel` picks the backend from the profile's ``kind``; a simulated panel is the same
backend on simulated hardware (gpiozero's ``MockFactory``, or a pseudo-terminal with
:mod:`sim.serial_mcu` on the other end), never an ``if simulated:`` inside a driver.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from drivers.panel.base import Panel, PanelEvent, PanelEventKind, PanelStats, Press
from drivers.profiles import GpioProfile, Profile, SerialProfile, load_profile
from drivers.resources import Resources
from edge.exceptions import BadProfile

__all__ = ["Panel", "PanelEvent", "PanelEventKind", "PanelStats", "Press", "open_panel"]


def open_panel(
    profile: Profile | str | Path,
    *,
    port: str | None = None,
    pin_factory: Any = None,
    resources: Resources | None = None,
    holder: str = "panel",
) -> Panel:
    """Open the panel a profile describes (a loaded profile, or a profile name or path).

    ``port`` is for serial panels (a device path or ``usb:VID:PID``; None: the profile's USB id) and
    is an error for GPIO panels. ``pin_factory`` is for GPIO panels (None: gpiozero's default) and is
    ignored by serial panels. Resources are reserved in ``resources`` (the process registry if None)
    under ``holder``. Call :meth:`Panel.start` to receive presses.
    """
    prof = profile if isinstance(profile, GpioProfile | SerialProfile) else load_profile(profile)
    if isinstance(prof, GpioProfile):
        if port:
            raise BadProfile([("port", "a GPIO panel has no serial port; remove port")])
        from drivers.panel.gpio import GpioPanel  # gpiozero is only needed for GPIO panels

        return GpioPanel(prof, pin_factory=pin_factory, resources=resources, holder=holder)
    from drivers.panel.serial import SerialPanel

    return SerialPanel(prof, port=port, resources=resources, holder=holder)
