"""Loudspeaker relay drivers: one :class:`RelayBank` over a GPIO, an LCUS (USB) or a Modbus RTU backend.

:func:`open_relays` picks the backend from the profile's ``kind``; a simulated board is the same
backend on simulated hardware (gpiozero's ``MockFactory``, or a pseudo-terminal with
:mod:`sim.serial_relay` on the other end), never an ``if simulated:`` inside a driver.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from drivers.relay.base import RelayBackend, RelayBank, RelayStats
from drivers.relay.profile import (
    AMPLIFIER,
    GpioRelayProfile,
    LcusRelayProfile,
    ModbusRelayProfile,
    RelayProfile,
    check_relays,
    list_relay_profiles,
    load_relay_profile,
    with_unit,
)
from drivers.resources import Resources, process_resources
from edge.exceptions import BadProfile, RelayFault

__all__ = [
    "AMPLIFIER",
    "RelayBackend",
    "RelayBank",
    "RelayFault",
    "RelayProfile",
    "RelayStats",
    "check_relays",
    "list_relay_profiles",
    "load_relay_profile",
    "open_relays",
]


def open_relays(
    profile: str | Path | RelayProfile,
    *,
    port: str | None = None,
    resources: Resources | None = None,
    holder: str = "relays",
    modbus_unit: int | None = None,
    pin_factory: Any = None,
) -> RelayBank:
    """Open the relay board a profile describes (a loaded profile, or a profile name or path).

    Every relay is opened before this returns; a board that does not answer yet leaves the bank with
    a :attr:`~RelayBank.problem` and the watchdog retrying. ``port`` is for serial boards (a device path
    or ``usb:VID:PID``; None: the profile's USB id) and an error for GPIO boards. ``modbus_unit``
    overrides a Modbus profile's unit id. ``pin_factory`` is for GPIO boards (None: gpiozero's
    default). Resources are reserved in ``resources`` (the process registry if None) under ``holder``.

    Raises :exc:`BadProfile` for a profile that cannot be used, :exc:`ResourceBusy` when a pin or the
    port is held by someone else, :exc:`RelayFault` when GPIO pins cannot be claimed.
    """
    prof: RelayProfile = (
        profile
        if isinstance(profile, GpioRelayProfile | LcusRelayProfile | ModbusRelayProfile)
        else load_relay_profile(profile)
    )
    if modbus_unit is not None and not isinstance(prof, ModbusRelayProfile):
        raise BadProfile([("modbus_unit", f"only Modbus relay boards have a unit id ({prof.kind} board)")])
    prof = with_unit(prof, modbus_unit)
    registry = resources if resources is not None else process_resources()
    backend: RelayBackend
    if isinstance(prof, GpioRelayProfile):
        if port:
            raise BadProfile([("port", "a GPIO relay board has no serial port; remove port")])
        from drivers.relay.gpio import GpioRelays  # gpiozero is only needed for GPIO boards

        backend = GpioRelays(prof, pin_factory=pin_factory, resources=registry, holder=holder)
    elif isinstance(prof, LcusRelayProfile):
        from drivers.relay.lcus import LcusBoard

        backend = LcusBoard(prof, port=port, resources=registry, holder=holder)
    else:
        from drivers.relay.modbus import ModbusBoard  # pymodbus is only needed for Modbus boards

        backend = ModbusBoard(prof, port=port, resources=registry, holder=holder)
    try:
        return RelayBank(prof, backend, resources=registry, holder=holder)
    except BaseException:
        backend.close()
        registry.release_all(holder)
        raise
