"""What the USB/serial relay backends share: finding the port, reserving it, naming it in messages."""

from __future__ import annotations

from drivers.panel.serial import find_port, reserve_port
from drivers.relay.base import RelayBackend
from drivers.relay.profile import SerialRelayProfile
from drivers.resources import Resources
from edge.exceptions import RelayFault


class SerialRelayBackend(RelayBackend):
    """A relay board behind a serial port (a USB adapter, or a pty in tests).

    ``port`` is a device path (prefer ``/dev/serial/by-id/...``) or ``usb:VID:PID``; None uses the
    profile's ``usb`` id. The port is reserved as ``<holder>.port`` at once but opened only when first
    needed, and opened again after a failure, so a board that was unplugged (and came back under another
    ``/dev/ttyUSB*`` name) is found again by the next operation.
    """

    def __init__(
        self, profile: SerialRelayProfile, *, port: str | None, resources: Resources, holder: str = "relays"
    ) -> None:
        super().__init__(profile, resources=resources, holder=holder)
        self.profile: SerialRelayProfile = profile
        self._port_name = reserve_port(port, profile.usb, what="relay board", resources=resources, holder=holder)
        self.port = port
        self._open_path: str | None = None

    @property
    def where(self) -> str:
        """The port as configured (a ``/dev/serial/by-id`` link stays a link in messages)."""
        return self._port_name

    @property
    def port_path(self) -> str | None:
        """The device path open now, None while closed."""
        return self._open_path

    def _find(self) -> str:
        path = find_port(self.port, self.profile.usb)
        if path is None:
            raise RelayFault(f"relay board not found at {self._port_name}")
        return path

    def _not_answering(self, detail: str) -> RelayFault:
        return RelayFault(f"relay board not answering on {self._port_name}: {detail}")
