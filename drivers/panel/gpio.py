"""GPIO panel backend: gpiozero devices on the Pi's own pins.

Buttons are gpiozero :class:`~gpiozero.Button` s (bounce time from the profile's ``debounce_ms``,
hold time = ``stuck_after_s`` for stuck detection), LEDs are :class:`~gpiozero.LED` s (one per button,
or one ring for the panel), the optional buzzer is an active :class:`~gpiozero.Buzzer`, and the
optional officer "done" button is one more :class:`~gpiozero.Button`.

The pin factory is gpiozero's own business: by default ``Device.pin_factory`` (lgpio on a Pi, or
whatever ``GPIOZERO_PIN_FACTORY`` says); tests and the simulator pass ``MockFactory()``.

gpiozero calls our handlers on its own threads (the pin's edge thread, the hold thread); they only
put a :class:`Press` or :class:`PanelEvent` on the panel's queue, so a slow commit never delays
edge detection.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Literal

from gpiozero import LED, Button, Buzzer
from gpiozero.exc import GPIOZeroError

from drivers.panel.base import Panel, PanelEvent, Press
from drivers.panel.protocol import LedMode
from drivers.profiles import GpioProfile, OutputPin
from drivers.resources import Resources
from edge.exceptions import HardwareError, ResourceBusy

log = logging.getLogger(__name__)

#: Continuous "blink" mode timing; the thank-you pattern comes from the profile.
BLINK_ON_S = 0.5
BLINK_OFF_S = 0.5


class GpioPanel(Panel):
    """A rating panel whose buttons, LEDs and buzzer are wired to GPIO pins.

    ``pin_factory`` is a gpiozero pin factory (None: gpiozero's default). Pins are reserved in
    ``resources`` under ``holder`` + the profile key path (``panel.buttons[0].pin``) before any device
    is created.
    """

    def __init__(
        self,
        profile: GpioProfile,
        *,
        pin_factory: Any = None,
        resources: Resources | None = None,
        holder: str = "panel",
    ) -> None:
        super().__init__(profile, resources=resources, holder=holder)
        self.profile: GpioProfile = profile
        self._factory = pin_factory
        self._devices: list[Any] = []  # everything to close, in creation order
        self._buttons: list[Button] = []
        self._button_leds: list[LED | None] = []
        self._ring: LED | None = None
        self._buzzer: Buzzer | None = None
        self._done: Button | None = None
        self._stuck: set[int] = set()
        try:
            for path, pin in profile.pins():
                shared = isinstance(pin, OutputPin) and pin.shared
                self._resources.reserve("gpio", pin.number, f"{holder}.{path}", shared=shared)
            self._open_devices()
        except ResourceBusy:
            self._resources.release_all(holder)
            raise
        except Exception as exc:
            # Whatever the pin factory raises (gpiozero's errors, OSError, lgpio.error "GPIO busy",
            # which is neither), the devices made so far hold their pins: closed here, or every
            # later attempt would find the panel's own pins in use.
            self._close_devices()
            self._resources.release_all(holder)
            raise HardwareError(f"cannot open the GPIO panel ({profile.model}): {exc}") from exc

    # -- hardware ----------------------------------------------------------------------------------

    def _open_devices(self) -> None:
        p = self.profile
        bounce = p.debounce_ms / 1000 if p.debounce_ms else None
        leds_by_pin: dict[int, LED] = {}

        def led_for(pin: OutputPin) -> LED:
            # A shared LED pin (one lamp for several buttons) is one gpiozero device.
            if pin.number not in leds_by_pin:
                leds_by_pin[pin.number] = self._add(
                    LED(pin.number, active_high=pin.active_high, pin_factory=self._factory)
                )
            return leds_by_pin[pin.number]

        for b in p.buttons:
            self._buttons.append(
                self._add(
                    Button(
                        b.pin.number,
                        pull_up=b.pin.pull_up,
                        bounce_time=bounce,
                        hold_time=p.stuck_after_s,
                        pin_factory=self._factory,
                    )
                )
            )
            self._button_leds.append(led_for(b.led) if b.led is not None else None)
        if p.ring is not None:
            self._ring = led_for(p.ring)
        if p.buzzer is not None:
            self._buzzer = self._add(
                Buzzer(p.buzzer.number, active_high=p.buzzer.active_high, pin_factory=self._factory)
            )
        if p.done_button is not None:
            self._done = self._add(
                Button(
                    p.done_button.number, pull_up=p.done_button.pull_up, bounce_time=bounce, pin_factory=self._factory
                )
            )

    def _add(self, device: Any) -> Any:
        self._devices.append(device)
        return device

    def _close_devices(self) -> None:
        for device in reversed(self._devices):
            try:
                device.close()
            except Exception:  # closing must go on for the other devices
                log.exception("%s: closing %r failed", self.holder, device)
        self._devices.clear()

    # -- Panel -------------------------------------------------------------------------------------

    def _start(self) -> None:
        for number, button in enumerate(self._buttons, start=1):
            button.when_pressed = self._pressed_handler(number)
            button.when_held = self._held_handler(number)
            button.when_released = self._released_handler(number)
        if self._done is not None:
            self._done.when_pressed = self._on_done
        self._deliver_event(PanelEvent("connected", {"backend": "gpio", "model": self.profile.model}))

    def _close(self) -> None:
        self._close_devices()

    def acknowledge(self, press: Press) -> None:
        """Nothing to tell GPIO hardware; counted for symmetry with the serial backend."""
        self._count(acks=1)

    def set_led(self, button: int | Literal["all"], mode: LedMode) -> None:
        """Drive the button's LED (the ring if it has none), or every LED for ``"all"``."""
        self._check_led_args(button, mode)
        for led in self._leds_for(button):
            try:
                self._drive(led, mode)
            except GPIOZeroError as exc:  # e.g. closed meanwhile: feedback is best effort
                log.warning("%s: LED %s %s failed: %s", self.holder, button, mode, exc)

    def beep(self, ms: int) -> None:
        """Sound the active buzzer for ``ms`` milliseconds, in the background."""
        self._check_beep_ms(ms)
        if self._buzzer is None:
            log.debug("%s: no buzzer in profile %s", self.holder, self.profile.model)
            return
        try:
            self._buzzer.beep(on_time=ms / 1000, off_time=0, n=1, background=True)
        except GPIOZeroError as exc:
            log.warning("%s: beep failed: %s", self.holder, exc)

    # -- helpers -----------------------------------------------------------------------------------

    def _leds_for(self, button: int | Literal["all"]) -> list[LED]:
        if button == "all":
            leds = [led for led in self._button_leds if led is not None]
            if self._ring is not None:
                leds.append(self._ring)
            return list(dict.fromkeys(leds))  # a shared LED once
        own = self._button_leds[button - 1]
        if own is not None:
            return [own]
        return [self._ring] if self._ring is not None else []

    def _drive(self, led: LED, mode: LedMode) -> None:
        if mode == "off":
            led.off()
        elif mode == "on":
            led.on()
        elif mode == "blink":
            led.blink(on_time=BLINK_ON_S, off_time=BLINK_OFF_S, background=True)
        else:
            t = self.profile.thanks
            led.blink(on_time=t.on_ms / 1000, off_time=t.off_ms / 1000, n=t.blinks, background=True)

    def _pressed_handler(self, number: int) -> Callable[[], None]:
        def pressed() -> None:
            self._deliver_press(Press(button=number, key=None, mseq=None, received_at=time.monotonic()))

        return pressed

    def _held_handler(self, number: int) -> Callable[[], None]:
        def held() -> None:
            self._stuck.add(number)
            self._count(stuck=1)
            self._deliver_event(PanelEvent("stuck", {"button": number, "held_s": self.profile.stuck_after_s}))

        return held

    def _released_handler(self, number: int) -> Callable[[], None]:
        def released() -> None:
            if number in self._stuck:
                self._stuck.discard(number)
                self._deliver_event(PanelEvent("released", {"button": number}))

        return released

    def _on_done(self) -> None:
        self._count(done=1)
        self._deliver_event(PanelEvent("done", {}))
