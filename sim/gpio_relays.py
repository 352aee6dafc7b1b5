"""Look at GPIO relays from outside: gpiozero's ``MockFactory`` pins, read as a technician reads the LEDs.

The relay driver runs unchanged on ``MockFactory`` pins; this helper reads the pins the way the relay
module's input LEDs show them (closed or open, active-low already inverted), and can leave a relay
closed before the driver starts, as a crashed process would::

    factory = MockFactory()
    sim = SimGpioRelays(profile, factory)
    sim.leave_closed("amplifier")
    with open_relays(profile, pin_factory=factory) as bank:
        assert not sim.is_closed("amplifier")     # opened at start
        bank.set_zones(["zone-1"])
        assert sim.states()["zone-1"]
"""

from __future__ import annotations

from typing import Any

from gpiozero.pins.mock import MockFactory, MockPin

from drivers.relay.profile import GpioRelay, GpioRelayProfile


class SimGpioRelays:
    """Test handles for a GPIO relay profile on a :class:`MockFactory`."""

    def __init__(self, profile: GpioRelayProfile, factory: MockFactory | None = None) -> None:
        self.profile = profile
        self.factory = factory if factory is not None else MockFactory()
        self._specs: dict[str, GpioRelay] = {name: spec for name, _, spec in profile.relays()}

    def pin(self, relay: str) -> MockPin:
        """The mock pin driving ``relay`` (the very object the driver's device uses)."""
        pin: Any = self.factory.pin(self._specs[relay].pin.number)
        return pin  # type: ignore[no-any-return]

    def is_closed(self, relay: str) -> bool:
        """Whether ``relay`` is closed now: its pin is at the relay's active level."""
        return self._closed_at(relay, self.pin(relay).state)

    def states(self) -> dict[str, bool]:
        """Every relay, closed or open, by name (amplifier first)."""
        return {name: self.is_closed(name) for name in self._specs}

    def history(self, relay: str) -> list[bool]:
        """Closed/open states ``relay``'s pin went through since it was created or cleared."""
        return [self._closed_at(relay, s.state) for s in self.pin(relay).states]

    def clear_history(self) -> None:
        """Forget every pin's history (start a new observation)."""
        for name in self._specs:
            self.pin(name).clear_states()

    def leave_closed(self, relay: str) -> None:
        """Put ``relay``'s line at its closed level before the driver claims it (a crashed process)."""
        pin = self.pin(relay)
        if self.profile.relay_active_high(self._specs[relay]):
            pin.drive_high()
        else:
            pin.drive_low()

    def _closed_at(self, relay: str, state: Any) -> bool:
        return bool(state) == self.profile.relay_active_high(self._specs[relay])
