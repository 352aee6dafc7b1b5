"""GPIO relays on gpiozero's MockFactory: real gpiozero OutputDevices, simulated pins, and the bank above them.

The bank's own behaviour (safety cut with a hung caller, switching order, callbacks, lifecycle) is
exercised here too, because GPIO is the backend with no transport in the way. So is a line that
fails under a running loudspeaker, from the pin up to the proof of play.
"""

from __future__ import annotations

import errno
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest
from gpiozero.pins.mock import MockFactory, MockPin

from drivers.relay import RelayBank, RelayFault, load_relay_profile, open_relays
from drivers.relay.profile import GpioRelayProfile, parse_relay_profile
from drivers.resources import Resources
from edge.exceptions import BadProfile, ResourceBusy
from edge.services.broadcast import HARDWARE_META
from sim.gpio_relays import SimGpioRelays
from sim.harness import wait_for

if TYPE_CHECKING:
    from tests.broadcast_fixtures import Loudspeaker

pytest_plugins = ["tests.broadcast_fixtures"]

#: Seconds; reached only when a test is about to fail (the bank retries every 2 s, the service looks every 2 s).
WAIT_S = 20.0


@pytest.fixture
def factory() -> Iterator[MockFactory]:
    f = MockFactory()
    yield f
    f.reset()


def shipped() -> GpioRelayProfile:
    profile = load_relay_profile("gpio-4ch-rpi")
    assert isinstance(profile, GpioRelayProfile)
    return profile


def quick(**extra: Any) -> GpioRelayProfile:
    """The shipped module's wiring with a short safety net, so a test sees the cut."""
    data: dict[str, Any] = {
        "kind": "gpio",
        "model": "quick-relays",
        "active_high": False,
        "amplifier": {"pin": 24},
        "zones": [{"name": "zone-1", "pin": 25}, {"name": "zone-2", "pin": 12}, {"name": "zone-3", "pin": 16}],
        "warm_up_s": 0,
        "idle_off_s": 0,
        "max_on_s": 0.5,
    }
    profile = parse_relay_profile(data | extra)
    assert isinstance(profile, GpioRelayProfile)
    return profile


class FailingPin(MockPin):  # type: ignore[misc]
    """A MockFactory pin that fails as a GPIO line can, once ``failing`` is set: the chip answers EIO
    to every write, which reaches gpiozero's devices as an OSError from the kernel's GPIO driver."""

    failing = False

    def _set_state(self, value: bool) -> None:
        if self.failing:
            raise OSError(errno.EIO, "Input/output error")
        super()._set_state(value)


def failing_pins() -> MockFactory:
    """A MockFactory whose pins are :class:`FailingPin` s (``factory.pin(24).failing = True``)."""
    return MockFactory(pin_class=FailingPin)


class Changes:
    """Collects on_change and on_safety_cut calls as a person would note them."""

    def __init__(self, bank: RelayBank) -> None:
        self.changes: list[tuple[str, bool]] = []
        self.cuts: list[str] = []
        self._lock = threading.Lock()
        bank.on_change = self._on_change
        bank.on_safety_cut = self._on_cut

    def _on_change(self, relay: str, closed: bool) -> None:
        with self._lock:
            self.changes.append((relay, closed))

    def _on_cut(self, reason: str) -> None:
        with self._lock:
            self.cuts.append(reason)


# -- all off at open --------------------------------------------------------------------------------


def test_a_bank_starts_with_every_relay_open_even_if_a_crashed_process_left_them_closed(factory: MockFactory) -> None:
    profile = shipped()
    sim = SimGpioRelays(profile, factory)
    for relay in profile.relay_names:
        sim.leave_closed(relay)
    # Active low: a closed relay is a low pin.
    assert all(not factory.pin(n).state for n in (24, 25, 12, 16))
    assert all(sim.states().values())

    with open_relays(profile, pin_factory=factory, resources=Resources()) as bank:
        assert all(factory.pin(n).state for n in (24, 25, 12, 16))  # high: every relay open
        assert sim.states() == dict.fromkeys(profile.relay_names, False)
        assert bank.states() == dict.fromkeys(profile.relay_names, False)
        assert bank.amp_on_since is None and bank.problem is None


def test_an_active_high_board_starts_with_low_pins(factory: MockFactory) -> None:
    profile = quick(
        active_high=True, zones=[{"name": "zone-1", "pin": 25}, {"name": "inverted", "pin": 12, "active_high": False}]
    )
    factory.pin(24).drive_high()
    factory.pin(25).drive_high()
    factory.pin(12).drive_low()
    with open_relays(profile, pin_factory=factory, resources=Resources()):
        assert factory.pin(24).state is False and factory.pin(25).state is False
        assert factory.pin(12).state is True  # the one active-low relay is open at a high pin


# -- switching ---------------------------------------------------------------------------------------


def test_the_amplifier_and_zones_drive_their_pins_inverted_for_an_active_low_module(factory: MockFactory) -> None:
    profile = shipped()
    sim = SimGpioRelays(profile, factory)
    with open_relays(profile, pin_factory=factory, resources=Resources()) as bank:
        bank.amplifier(True)
        assert factory.pin(24).state is False  # low: closed
        assert bank.amp_on_since is not None
        bank.set_zones(["zone-2"])
        assert (factory.pin(25).state, factory.pin(12).state, factory.pin(16).state) == (True, False, True)
        assert sim.states() == {"amplifier": True, "zone-1": False, "zone-2": True, "zone-3": False}
        assert bank.states() == sim.states()
        bank.set_zones([])
        bank.amplifier(False)
        assert sim.states() == dict.fromkeys(profile.relay_names, False)
        assert bank.amp_on_since is None


def test_set_zones_opens_before_it_closes_and_all_off_opens_the_amplifier_last(factory: MockFactory) -> None:
    profile = shipped()
    with open_relays(profile, pin_factory=factory, resources=Resources()) as bank:
        seen = Changes(bank)
        bank.amplifier(True)
        bank.set_zones(["zone-1", "zone-2"])
        bank.set_zones(["zone-3", "zone-2"])
        bank.all_off()
        expected = [
            ("amplifier", True),
            ("zone-1", True),
            ("zone-2", True),
            ("zone-1", False),  # break before make
            ("zone-3", True),
            ("zone-2", False),  # all_off: zones first ...
            ("zone-3", False),
            ("amplifier", False),  # ... then the amplifier
        ]
        assert wait_for(lambda: len(seen.changes) == len(expected), timeout=10)
        assert seen.changes == expected


def test_an_unknown_zone_switches_nothing(factory: MockFactory) -> None:
    profile = shipped()
    sim = SimGpioRelays(profile, factory)
    with open_relays(profile, pin_factory=factory, resources=Resources()) as bank:
        bank.set_zones(["zone-1"])
        with pytest.raises(ValueError, match=r"unknown zone cho \(this board has zone-1, zone-2, zone-3\)"):
            bank.set_zones(["zone-3", "cho"])
        with pytest.raises(ValueError, match="not the string"):
            bank.set_zones("zone-3")
        assert sim.states() == {"amplifier": False, "zone-1": True, "zone-2": False, "zone-3": False}
        assert bank.zones == ("zone-1", "zone-2", "zone-3")
        assert (bank.warm_up_s, bank.idle_off_s, bank.max_on_s) == (2, 10, 7200)


def test_switching_the_amplifier_on_again_keeps_its_clock(factory: MockFactory) -> None:
    with open_relays(shipped(), pin_factory=factory, resources=Resources()) as bank:
        bank.amplifier(True)
        since = bank.amp_on_since
        bank.amplifier(True)
        assert bank.amp_on_since == since
        bank.amplifier(False)
        bank.amplifier(True)
        assert bank.amp_on_since is not None and since is not None and bank.amp_on_since > since


# -- the safety net ----------------------------------------------------------------------------------


def test_the_maximum_on_time_opens_every_relay_while_the_caller_hangs(factory: MockFactory) -> None:
    profile = quick()
    sim = SimGpioRelays(profile, factory)
    stuck = threading.Event()
    with open_relays(profile, pin_factory=factory, resources=Resources()) as bank:
        seen = Changes(bank)

        def broadcast_that_hangs() -> None:
            bank.amplifier(True)
            bank.set_zones(["zone-1", "zone-3"])
            stuck.wait()  # a stuck audio source: this thread never gets to switch anything off

        caller = threading.Thread(target=broadcast_that_hangs, daemon=True)
        caller.start()
        try:
            assert wait_for(lambda: seen.cuts, timeout=30)
            assert caller.is_alive()  # the cut did not wait for the caller
            assert sim.states() == dict.fromkeys(profile.relay_names, False)
            assert bank.amp_on_since is None
            [reason] = seen.cuts
            assert reason.startswith("the amplifier was on for ") and "(max_on_s 0.5 s): every relay opened" in reason
            assert wait_for(lambda: ("amplifier", False) in seen.changes, timeout=10)
            assert seen.changes[-3:] == [("zone-1", False), ("zone-3", False), ("amplifier", False)]
            assert bank.stats.safety_cuts == 1

            # A new item may switch the amplifier on again; its clock starts afresh.
            bank.amplifier(True)
            assert sim.is_closed("amplifier") and bank.amp_on_since is not None
            assert wait_for(lambda: len(seen.cuts) == 2, timeout=30)
            assert not sim.is_closed("amplifier")
        finally:
            stuck.set()
            caller.join(timeout=10)


def test_no_cut_while_the_amplifier_is_switched_off_in_time(factory: MockFactory) -> None:
    profile = quick(max_on_s=1.0)
    with open_relays(profile, pin_factory=factory, resources=Resources()) as bank:
        seen = Changes(bank)
        for _ in range(3):
            bank.amplifier(True)
            bank.amplifier(False)
        # An absence can only be waited out: twice max_on_s after the last switch-on, no cut came.
        time.sleep(2.0)
        assert seen.cuts == [] and bank.stats.safety_cuts == 0 and bank.amp_on_since is None


# -- resources and lifecycle -------------------------------------------------------------------------


def test_pins_are_reserved_under_key_paths_and_released_at_close(factory: MockFactory) -> None:
    resources = Resources()
    bank = open_relays(shipped(), pin_factory=factory, resources=resources)
    assert resources.held() == {
        "GPIO 24": ["relays.amplifier.pin"],
        "GPIO 25": ["relays.zones[0].pin"],
        "GPIO 12": ["relays.zones[1].pin"],
        "GPIO 16": ["relays.zones[2].pin"],
    }
    bank.set_zones(["zone-1"])
    bank.close()
    bank.close()  # idempotent
    assert resources.held() == {}
    assert bank.closed
    assert factory.pin(25).state is True  # closing opened the zone
    with pytest.raises(RelayFault, match="closed"):
        bank.amplifier(True)


def test_a_pin_held_by_the_panel_is_refused_and_nothing_is_left_reserved(factory: MockFactory) -> None:
    resources = Resources()
    resources.reserve("gpio", 12, "panel.buttons[0].led")
    with pytest.raises(ResourceBusy, match=r"GPIO 12 is used by panel.buttons\[0\].led"):
        open_relays(shipped(), pin_factory=factory, resources=resources)
    assert resources.held() == {"GPIO 12": ["panel.buttons[0].led"]}


def test_a_gpio_board_takes_no_port_and_no_modbus_unit(factory: MockFactory) -> None:
    with pytest.raises(BadProfile, match="no serial port"):
        open_relays("gpio-4ch-rpi", port="/dev/ttyUSB0", pin_factory=factory, resources=Resources())
    with pytest.raises(BadProfile, match="unit id"):
        open_relays("gpio-4ch-rpi", modbus_unit=2, pin_factory=factory, resources=Resources())


def test_a_slow_callback_never_delays_switching(factory: MockFactory) -> None:
    profile = shipped()
    sim = SimGpioRelays(profile, factory)
    release = threading.Event()
    calls: list[tuple[str, bool]] = []

    def slow(relay: str, closed: bool) -> None:
        calls.append((relay, closed))
        release.wait(30)

    with open_relays(profile, pin_factory=factory, resources=Resources()) as bank:
        bank.on_change = slow
        bank.amplifier(True)
        bank.set_zones(["zone-1", "zone-2", "zone-3"])  # returns although the first callback still waits
        assert sim.states() == dict.fromkeys(profile.relay_names, True)
        release.set()
        assert wait_for(lambda: len(calls) == 4, timeout=10)


# -- a line that fails -------------------------------------------------------------------------------


def test_a_line_that_fails_with_eio_is_a_relay_fault_until_it_answers_again() -> None:
    factory = failing_pins()
    profile = shipped()
    sim = SimGpioRelays(profile, factory)
    with open_relays(profile, pin_factory=factory, resources=Resources()) as bank:
        amplifier = factory.pin(24)  # the amplifier's relay on gpio-4ch-rpi
        amplifier.failing = True

        with pytest.raises(RelayFault, match=r"^relay amplifier on GPIO24: \[Errno 5\] Input/output error$"):
            bank.amplifier(True)
        assert bank.problem == "relay amplifier on GPIO24: [Errno 5] Input/output error"
        # Opening every relay stops at the amplifier as well; the zones were opened first.
        with pytest.raises(RelayFault, match="amplifier"):
            bank.all_off()
        assert bank.stats.faults == 2
        assert not any(sim.is_closed(zone) for zone in profile.zone_names)

        amplifier.failing = False
        # The bank's watchdog tries every relay off again every 2 s: once the line answers, that is it.
        assert wait_for(lambda: bank.problem is None, 10)
        assert bank.stats.off_retries >= 1
        bank.amplifier(True)
        assert sim.is_closed("amplifier") and bank.problem is None


def test_a_loudspeaker_whose_amplifier_line_fails_reports_it_fails_the_play_and_plays_again_once_it_works(
    make_loudspeaker: Callable[..., Loudspeaker],
) -> None:
    """The whole way up: the broadcast service on the failing pin, the real scheduler, the sound card.
    What a technician checks: the item failed with the relay's reason and nothing was heard, the
    loudspeaker is still there to take the next one, ``edge status`` (the store's hardware note) names
    the line while it fails and not after, and the next item plays."""
    factory = failing_pins()
    ls = make_loudspeaker(factory=factory)
    amplifier = factory.pin(24)
    amplifier.failing = True

    ls.play("tin-sang", ls.tone_source(0.5))

    assert ls.wait_state("tin-sang", "failed"), ls.events("tin-sang")
    failed = ls.events("tin-sang")[-1]
    assert (failed["reason"], failed["detail"]) == (
        "relay_fault",
        "relay amplifier on GPIO24: [Errno 5] Input/output error",
    )
    assert ls.card.items == []
    scheduler = ls.service.scheduler.thread
    assert scheduler is not None and scheduler.is_alive()

    def noted() -> dict[str, str]:
        found: dict[str, str] = json.loads(ls.outbox.get_meta(HARDWARE_META) or "{}")
        return found

    assert wait_for(lambda: "relays" in noted(), WAIT_S), noted()
    assert "Input/output error" in noted()["relays"]
    assert "Input/output error" in str(ls.service.status()["relays"]["problem"])

    amplifier.failing = False
    assert wait_for(lambda: "relays" not in noted(), WAIT_S), noted()
    ls.play("tin-chieu", ls.tone_source(0.5))
    assert ls.wait_state("tin-chieu", "finished"), ls.events("tin-chieu")
    [played] = ls.card.items
    assert played.seconds == pytest.approx(0.5, abs=0.2)
