"""The GPIO panel on gpiozero's MockFactory: real gpiozero devices, simulated pins."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from gpiozero.pins.mock import MockFactory

from drivers.panel import open_panel
from drivers.panel.gpio import GpioPanel
from drivers.resources import Resources
from edge.exceptions import BadProfile, ResourceBusy
from sim.gpio_panel import SimGpioPanel
from tests.panel_fixtures import Recorder, gpio_profile, wait_until


@pytest.fixture
def factory() -> Iterator[MockFactory]:
    f = MockFactory()
    yield f
    f.reset()


def test_a_press_reaches_the_service_with_the_button_number(factory: MockFactory) -> None:
    profile = gpio_profile()
    sim = SimGpioPanel(profile, factory)
    with open_panel(profile, pin_factory=factory, resources=Resources()) as panel:
        rec = Recorder().start(panel)
        assert rec.wait_event("connected")
        sim.press(3)
        sim.press(1)
        assert rec.wait_presses(2)
    assert [p.button for p in rec.presses] == [3, 1]
    assert all(p.key is None and p.mseq is None for p in rec.presses)
    assert panel.buttons[2].label == "neutral" and panel.buttons[2].text == "Bình thường"
    assert panel.stats.presses == 2 and panel.stats.acks == 2


def test_thanks_blinks_the_pressed_buttons_led_and_leaves_it_off(factory: MockFactory) -> None:
    profile = gpio_profile(thanks={"blinks": 3, "on_ms": 10, "off_ms": 10})
    sim = SimGpioPanel(profile, factory)
    with GpioPanel(profile, pin_factory=factory, resources=Resources()) as panel:
        rec = Recorder().start(panel)
        rec.commit = lambda press: panel.set_led(press.button, "thanks")
        sim.clear_history()
        sim.press(2)
        assert rec.wait_presses(1)
        assert wait_until(lambda: len(sim.led_history(2)) == 7)
        assert sim.led_history(2) == [False, True, False, True, False, True, False]
        # Only the pressed button's LED moved.
        assert sim.led_history(1) == [False]
        assert not sim.led_is_lit(2)


def test_a_panel_with_a_ring_thanks_on_the_ring(factory: MockFactory) -> None:
    profile = gpio_profile("gpio-3btn-rpi", thanks={"blinks": 2, "on_ms": 10, "off_ms": 10})
    sim = SimGpioPanel(profile, factory)
    with GpioPanel(profile, pin_factory=factory, resources=Resources()) as panel:
        sim.clear_history()
        panel.set_led(3, "thanks")
        assert wait_until(lambda: len(sim.led_history(3)) == 5)
        assert sim.led_history(3) == [False, True, False, True, False]


def test_leds_on_off_all_and_the_buzzer(factory: MockFactory) -> None:
    profile = gpio_profile()
    sim = SimGpioPanel(profile, factory)
    with GpioPanel(profile, pin_factory=factory, resources=Resources()) as panel:
        panel.set_led("all", "on")
        assert all(sim.led_is_lit(b) for b in range(1, 5))
        panel.set_led(4, "off")
        assert [sim.led_is_lit(b) for b in range(1, 5)] == [True, True, True, False]
        panel.set_led("all", "off")
        sim.clear_history()
        panel.beep(20)
        assert wait_until(lambda: sim.buzzer_history() == [False, True, False])
        with pytest.raises(ValueError):
            panel.set_led(5, "on")
        with pytest.raises(ValueError):
            panel.set_led(1, "disco")  # type: ignore[arg-type]


def test_a_button_held_down_is_reported_stuck_and_then_released(factory: MockFactory) -> None:
    profile = gpio_profile(stuck_after_s=0.05)
    sim = SimGpioPanel(profile, factory)
    with GpioPanel(profile, pin_factory=factory, resources=Resources()) as panel:
        rec = Recorder().start(panel)
        sim.hold(4)  # something leans on the button
        assert rec.wait_event("stuck")
        assert rec.last("stuck").detail["button"] == 4
        sim.release(4)
        assert rec.wait_event("released")
        assert rec.last("released").detail == {"button": 4}
    # The press itself counted once, when it went down.
    assert [p.button for p in rec.presses] == [4]
    assert panel.stats.stuck == 1


def test_the_officers_done_button_is_an_event_not_a_rating(factory: MockFactory) -> None:
    profile = gpio_profile()
    sim = SimGpioPanel(profile, factory)
    with GpioPanel(profile, pin_factory=factory, resources=Resources()) as panel:
        rec = Recorder().start(panel)
        sim.press_done()
        assert rec.wait_event("done")
    assert rec.presses == []


def test_a_failing_commit_does_not_stop_the_panel(factory: MockFactory) -> None:
    profile = gpio_profile()
    sim = SimGpioPanel(profile, factory)
    with GpioPanel(profile, pin_factory=factory, resources=Resources()) as panel:
        rec = Recorder().start(panel)
        failures = [OSError("disk full")]

        def commit(press: object) -> None:
            if failures:
                raise failures.pop()

        rec.commit = commit
        sim.press(1)
        assert wait_until(lambda: panel.stats.callback_errors == 1)
        sim.press(2)
        assert rec.wait_presses(1)
    assert [p.button for p in rec.presses] == [2]


def test_pins_are_reserved_and_a_second_panel_is_refused_naming_the_holder(factory: MockFactory) -> None:
    profile = gpio_profile()
    resources = Resources()
    with GpioPanel(profile, pin_factory=factory, resources=resources, holder="panel"):
        assert resources.holder("gpio", 17) == "panel.buttons[0].pin"
        with pytest.raises(ResourceBusy, match=r"GPIO 17 is used by panel\.buttons\[0\]\.pin"):
            GpioPanel(profile, pin_factory=factory, resources=resources, holder="panel2")
    # Closing released them: the panel can be opened again.
    assert resources.held() == {}
    with GpioPanel(profile, pin_factory=factory, resources=resources):
        pass


def test_close_is_idempotent_and_a_gpio_panel_refuses_a_port(factory: MockFactory) -> None:
    profile = gpio_profile()
    panel = GpioPanel(profile, pin_factory=factory, resources=Resources())
    panel.start(lambda press: None)
    panel.close()
    panel.close()
    assert panel.closed and not panel.connected
    with pytest.raises(BadProfile):
        open_panel(profile, port="/dev/ttyUSB0", pin_factory=factory, resources=Resources())
