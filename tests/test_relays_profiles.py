"""Relay board profiles: the shipped ones load, and a technician's mistakes are named by key path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from drivers.profiles import list_profiles
from drivers.relay.profile import (
    GpioRelayProfile,
    LcusRelayProfile,
    ModbusRelayProfile,
    check_relays,
    list_relay_profiles,
    load_relay_profile,
    parse_relay_profile,
)
from drivers.resources import Resources
from edge.exceptions import BadProfile


def gpio(zones: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "kind": "gpio",
        "model": "test-relays",
        "active_high": False,
        "amplifier": {"pin": 24},
        "zones": zones,
    } | extra


def problems_of(data: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(BadProfile) as info:
        parse_relay_profile(data)
    return dict(info.value.problems)


# -- shipped profiles ------------------------------------------------------------------------------


def test_every_shipped_relay_profile_loads_and_validates_as_a_section() -> None:
    names = list_relay_profiles()
    assert {"gpio-4ch-rpi", "lcus-4ch", "modbus-8ch"} <= set(names)
    for name in names:
        profile = load_relay_profile(name)
        assert profile.relay_names[0] == "amplifier" and len(profile.zone_names) >= 1
        assert profile.max_on_s > profile.warm_up_s + profile.idle_off_s
        port = None if isinstance(profile, GpioRelayProfile) else "/dev/serial/by-id/usb-relay"
        assert check_relays(name, port) == []
    # Relay profiles live apart from the panels', so neither list can pick up the other's files.
    assert not set(names) & set(list_profiles())


def test_the_shipped_boards_are_what_their_comments_say() -> None:
    gpio_board = load_relay_profile("gpio-4ch-rpi")
    assert isinstance(gpio_board, GpioRelayProfile)
    assert gpio_board.active_high is False  # opto-isolated modules close on a low pin
    assert [spec.pin.number for _, _, spec in gpio_board.relays()] == [24, 25, 12, 16]
    lcus = load_relay_profile("lcus-4ch")
    assert isinstance(lcus, LcusRelayProfile)
    assert (lcus.baudrate, lcus.readback) == (9600, False)
    assert [spec.channel for _, _, spec in lcus.relays()] == [1, 2, 3, 4]
    modbus = load_relay_profile("modbus-8ch")
    assert isinstance(modbus, ModbusRelayProfile)
    assert (modbus.unit, modbus.parity, modbus.readback) == (1, "N", True)
    assert [spec.coil for _, _, spec in modbus.relays()] == list(range(8))
    assert all(p.warm_up_s == 2 and p.idle_off_s == 10 and p.max_on_s == 7200 for p in (gpio_board, lcus, modbus))


def test_a_gpio_relay_may_differ_from_the_profiles_polarity() -> None:
    profile = parse_relay_profile(
        gpio([{"name": "cho", "pin": "GPIO25"}, {"name": "truong-hoc", "pin": 12, "active_high": True}])
    )
    assert isinstance(profile, GpioRelayProfile)
    _, cho, school = (spec for _, _, spec in profile.relays())
    assert cho.pin.number == 25 and profile.relay_active_high(cho) is False
    assert profile.relay_active_high(school) is True
    assert profile.zone_names == ("cho", "truong-hoc")


# -- mistakes, by key path -------------------------------------------------------------------------


def test_gpio_pin_mistakes_are_named_by_key_path() -> None:
    found = problems_of(
        gpio(
            [
                {"name": "zone-1", "pin": 25},
                {"name": "zone-2", "pin": 25},
                {"name": "zone-3", "pin": 0},
                {"name": "zone-4", "pin": 30},
                {"name": "zone-5", "pin": 2},
            ]
        )
    )
    assert found["zones[1].pin"] == "GPIO 25 is used by zones[0].pin"
    assert found["zones[2].pin"].startswith("GPIO 0 is reserved: the HAT ID EEPROM")
    assert found["zones[3].pin"].startswith("GPIO 30 is not on the rpi-40pin header (usable: GPIO ")
    assert found["zones[4].pin"].startswith("GPIO 2 is I²C1 SDA") and "allow_special: true" in found["zones[4].pin"]
    assert len(found) == 4


def test_the_amplifier_pin_clashes_like_any_other() -> None:
    found = problems_of(gpio([{"name": "zone-1", "pin": 24}]))
    assert found == {"zones[0].pin": "GPIO 24 is used by amplifier.pin"}


def test_a_gpio_profile_must_say_its_polarity() -> None:
    data = gpio([{"name": "zone-1", "pin": 25}])
    del data["active_high"]
    assert problems_of(data) == {"active_high": "required key is missing"}


def test_zone_names_are_unique_slugs_and_not_reserved_words() -> None:
    found = problems_of(
        gpio(
            [
                {"name": "zone-1", "pin": 25},
                {"name": "zone-1", "pin": 12},
                {"name": "amplifier", "pin": 16},
                {"name": "all", "pin": 20},
            ]
        )
    )
    assert found == {
        "zones[1].name": "zone-1 is also the name of zones[0]",
        "zones[2].name": "'amplifier' cannot name a zone (it means something else)",
        "zones[3].name": "'all' cannot name a zone (it means something else)",
    }
    found = problems_of(gpio([{"name": "Khu Phố 1", "pin": 25}]))
    assert list(found) == ["zones[0].name"] and "pattern" in found["zones[0].name"]


def test_the_safety_cut_must_outlast_warm_up_and_idle_time() -> None:
    found = problems_of(gpio([{"name": "zone-1", "pin": 25}], warm_up_s=5, idle_off_s=60, max_on_s=30))
    assert found == {
        "max_on_s": "30 s must be longer than warm_up_s + idle_off_s (65 s), or the safety cut ends normal use"
    }
    assert "max_on_s" in problems_of(gpio([{"name": "zone-1", "pin": 25}], max_on_s=0))


def test_lcus_and_modbus_mistakes_are_named_by_key_path() -> None:
    lcus = {"kind": "lcus", "model": "lcus-4", "amplifier": {"channel": 1}}
    found = problems_of(lcus | {"zones": [{"name": "a", "channel": 0}, {"name": "b", "channel": 1}], "baudrate": 1234})
    assert set(found) == {"zones[0].channel", "baudrate"}
    assert found["baudrate"].startswith("baudrate must be one of 1200, 2400")
    assert problems_of(lcus | {"zones": [{"name": "a", "channel": 1}]}) == {
        "zones[0].channel": "channel 1 is also used by amplifier"
    }
    modbus = {"kind": "modbus", "model": "mb-8", "amplifier": {"coil": 0}}
    found = problems_of(modbus | {"zones": [{"name": "a", "coil": 0}], "unit": 0, "parity": "X", "speed": 9600})
    assert set(found) == {"unit", "parity", "speed"} and found["speed"] == "unknown key"
    assert problems_of(modbus | {"zones": [{"name": "a", "coil": 1}, {"name": "b", "coil": 1}]}) == {
        "zones[1].coil": "coil 1 is also used by zones[0]"
    }
    assert problems_of(modbus | {"zones": [{"name": "a", "coil": 4000}]}) == {
        "readback": "the coils span 4001 addresses; one read covers at most 2000"
    }
    assert parse_relay_profile(modbus | {"zones": [{"name": "a", "coil": 4000}], "readback": False})


def test_an_unknown_kind_lists_the_known_ones() -> None:
    assert problems_of({"kind": "usb-hid", "model": "x"}) == {
        "kind": "must be one of gpio, lcus, modbus, got 'usb-hid'"
    }
    assert problems_of({"model": "x"}) == {"kind": "required key is missing"}


# -- a [relays] section, checked without hardware ------------------------------------------------


def test_check_relays_names_the_sections_own_keys(tmp_path: Path) -> None:
    assert check_relays("gpio-4ch-rpi", "/dev/ttyUSB0") == [
        ("port", "a GPIO relay board has no serial port; remove port")
    ]
    assert check_relays("lcus-4ch", "ttyUSB0") == [("port", "'ttyUSB0' is not a device path (/dev/...) or usb:VID:PID")]
    assert check_relays("lcus-4ch", None, 3) == [
        ("modbus_unit", "only Modbus relay boards have a unit id (lcus board); remove it")
    ]
    assert check_relays("modbus-8ch", "usb:0403:6001", 7) == []
    [(key, msg)] = check_relays("modbus-8ch")
    assert key == "port" and msg.startswith("a serial relay board needs a port")
    [(key, msg)] = check_relays("relay-9ch")
    assert key == "profile" and msg.startswith("no profile 'relay-9ch' (shipped: gpio-4ch-rpi, lcus-4ch, modbus-8ch")

    broken = tmp_path / "broken.yaml"
    broken.write_text("kind: lcus\nmodel: lcus-4\namplifier: {channel: 1}\nzones: [{name: a, channel: 1}]\n")
    assert check_relays(str(broken), "/dev/ttyUSB0") == [
        ("zones[0].channel", "channel 1 is also used by amplifier (in profile broken.yaml)")
    ]


def test_check_relays_reserves_in_the_registry_it_is_given() -> None:
    resources = Resources()
    resources.reserve("gpio", 12, "panel.buttons[2].led")
    resources.reserve("serial", "/dev/ttyUSB0", "panel.port")
    assert check_relays("gpio-4ch-rpi", resources=resources) == [
        ("zones[1].pin", "GPIO 12 is used by panel.buttons[2].led (in profile gpio-4ch-rpi.yaml)")
    ]
    assert check_relays("lcus-4ch", "/dev/ttyUSB0", resources=resources) == [
        ("port", "serial port /dev/ttyUSB0 is used by panel.port")
    ]
    assert resources.holder("gpio", 24) == "relays.amplifier.pin"
