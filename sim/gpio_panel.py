"""Play the citizen on a simulated GPIO panel: gpiozero's ``MockFactory`` pins, seen from outside.

The panel driver runs unchanged on ``MockFactory`` pins; this helper drives the button pins the way
a switch would and reads the LED and buzzer pins the way a person would look at them::

    factory = MockFactory()
    sim = SimGpioPanel(profile, factory)
    with GpioPanel(profile, pin_factory=factory) as panel:
        panel.start(on_press)
        sim.press(2)
        assert sim.led_history(2) == [False, True, False, True, False, True, False]
"""

from __future__ import annotations

from typing import Any

from gpiozero.pins.mock import MockFactory, MockPin

from drivers.profiles import GpioProfile, InputPin, OutputPin


class SimGpioPanel:
    """Test handles for a GPIO panel profile on a :class:`MockFactory`."""

    def __init__(self, profile: GpioProfile, factory: MockFactory | None = None) -> None:
        self.profile = profile
        self.factory = factory if factory is not None else MockFactory()

    # -- inputs ------------------------------------------------------------------------------------

    def hold(self, button: int) -> None:
        """Push ``button`` down and keep it down."""
        self._close_switch(self.profile.buttons[button - 1].pin)

    def release(self, button: int) -> None:
        """Let ``button`` go."""
        self._open_switch(self.profile.buttons[button - 1].pin)

    def press(self, button: int) -> None:
        """Press and release ``button`` (debounce is the pin driver's job; MockPin does not bounce)."""
        self.hold(button)
        self.release(button)

    def press_done(self) -> None:
        """The officer presses the "done" button."""
        pin = self.profile.done_button
        if pin is None:
            raise ValueError(f"profile {self.profile.model} has no done button")
        self._close_switch(pin)
        self._open_switch(pin)

    # -- outputs -----------------------------------------------------------------------------------

    def led_spec(self, button: int) -> OutputPin | None:
        """The LED that lights for ``button``: its own, else the ring, else None."""
        b = self.profile.buttons[button - 1]
        return b.led if b.led is not None else self.profile.ring

    def led_is_lit(self, button: int) -> bool:
        """Whether the LED for ``button`` is lit now."""
        spec = self.led_spec(button)
        return spec is not None and self._lit(spec, self.pin(spec.number).state)

    def led_history(self, button: int) -> list[bool]:
        """Lit/unlit states the LED for ``button`` went through since the pin was created or cleared."""
        spec = self.led_spec(button)
        if spec is None:
            return []
        return [self._lit(spec, s.state) for s in self.pin(spec.number).states]

    def clear_history(self) -> None:
        """Forget the state history of every output pin (start a new observation)."""
        for _, spec in self.profile.pins():
            if isinstance(spec, OutputPin):
                self.pin(spec.number).clear_states()

    def buzzer_history(self) -> list[bool]:
        """On/off states the buzzer went through."""
        spec = self.profile.buzzer
        if spec is None:
            return []
        return [self._lit(spec, s.state) for s in self.pin(spec.number).states]

    def pin(self, number: int) -> MockPin:
        """The mock pin for BCM GPIO ``number`` (the very object the driver's device uses)."""
        pin: Any = self.factory.pin(number)
        return pin  # type: ignore[no-any-return]

    # -- helpers -----------------------------------------------------------------------------------

    @staticmethod
    def _lit(spec: OutputPin, state: Any) -> bool:
        return bool(state) == spec.active_high

    def _close_switch(self, spec: InputPin) -> None:
        # A pulled-up button connects the pin to ground; a pulled-down one connects it to 3V3.
        pin = self.pin(spec.number)
        if spec.pull_up:
            pin.drive_low()
        else:
            pin.drive_high()

    def _open_switch(self, spec: InputPin) -> None:
        pin = self.pin(spec.number)
        if spec.pull_up:
            pin.drive_high()
        else:
            pin.drive_low()
