"""GPIO relay backend: one gpiozero :class:`~gpiozero.OutputDevice` per relay, on the Pi's own pins.

Each device is created with ``initial_value=False``, so the pin is driven to the relay's *open* level
the moment it is claimed, whatever a previous process left on the line (active-low modules get a high
pin). The pin factory is gpiozero's own business: by default ``Device.pin_factory`` (lgpio on a Pi,
or whatever ``GPIOZERO_PIN_FACTORY`` says); tests and the simulator pass ``MockFactory()``.

A line that fails once it is open (the chip answers EIO: a loose header, an undervolted Pi, a kernel
driver in trouble) raises from under gpiozero, which wraps only its own errors: ``OSError`` from the
kernel's GPIO character device, ``lgpio.error`` from lgpio on a Pi. Each becomes :exc:`RelayFault`
here, as a serial board's lost port does, so the bank holds it as the relay problem and the
broadcast service fails the item with ``relay_fault`` and goes on.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from gpiozero import OutputDevice
from gpiozero.exc import GPIOZeroError

from drivers.relay.base import RelayBackend
from drivers.relay.profile import GpioRelayProfile
from drivers.resources import Resources
from edge.exceptions import RelayFault, ResourceBusy

log = logging.getLogger(__name__)

#: What a failing GPIO line raises through gpiozero's devices: gpiozero's own errors, the kernel's
#: ``OSError`` (EIO, ENODEV after the chip went away), and lgpio's ``lgpio.error``, which carries every
#: failure of the lgpio factory (gpiozero's default on a Pi) and is not an ``OSError``.
LINE_ERRORS: tuple[type[Exception], ...] = (GPIOZeroError, OSError)
with contextlib.suppress(ImportError):  # lgpio is only installed on a Pi ('.[pi]')
    import lgpio

    LINE_ERRORS += (lgpio.error,)


class GpioRelays(RelayBackend):
    """Relays wired to GPIO pins. Pins are reserved under ``holder`` + key path (``relays.zones[0].pin``)."""

    def __init__(
        self, profile: GpioRelayProfile, *, pin_factory: Any = None, resources: Resources, holder: str = "relays"
    ) -> None:
        super().__init__(profile, resources=resources, holder=holder)
        self.profile: GpioRelayProfile = profile
        self._devices: dict[str, OutputDevice] = {}
        try:
            for _, path, spec in profile.relays():
                resources.reserve("gpio", spec.pin.number, f"{holder}.{path}.pin")
            for name, _, spec in profile.relays():
                self._devices[name] = OutputDevice(
                    spec.pin.number,
                    active_high=profile.relay_active_high(spec),
                    initial_value=False,
                    pin_factory=pin_factory,
                )
        except ResourceBusy:
            resources.release_all(holder)
            raise
        except LINE_ERRORS as exc:
            self.close()
            resources.release_all(holder)
            raise RelayFault(f"cannot open the GPIO relays ({profile.model}): {exc}") from exc

    @property
    def where(self) -> str:
        """``GPIO``: the relays hang off the Pi's own header."""
        return "GPIO"

    def switch(self, relay: str, closed: bool) -> None:
        """Drive the relay's pin to its closed or open level."""
        device = self._devices[relay]
        try:
            if closed:
                device.on()
            else:
                device.off()
        except LINE_ERRORS as exc:
            raise RelayFault(f"relay {relay} on {device.pin}: {exc}") from exc

    def read(self) -> dict[str, bool]:
        """Each pin's level as the pin factory reads it, as closed/open (what the Pi drives)."""
        try:
            return {name: bool(device.value) for name, device in self._devices.items()}
        except LINE_ERRORS as exc:
            raise RelayFault(f"cannot read the GPIO relay pins: {exc}") from exc

    def close(self) -> None:
        """Close every device (the bank has opened every relay first)."""
        for name, device in reversed(list(self._devices.items())):
            try:
                device.close()
            except Exception:  # closing must go on for the other relays
                log.exception("%s: closing relay %s failed", self.holder, name)
        self._devices.clear()
