"""Hardware profiles: the shipped ones load, and a technician's mistakes are named by key path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from drivers.profiles import (
    DEFAULT_TEXT,
    GpioProfile,
    SerialProfile,
    check_panel,
    list_profiles,
    load_profile,
    parse_profile,
)
from drivers.resources import Resources
from edge.exceptions import BadProfile, ConfigError, ResourceBusy


def gpio(buttons: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"kind": "gpio", "model": "test-panel", "buttons": buttons, **extra}


def problems_of(data: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(BadProfile) as info:
        parse_profile(data)
    return dict(info.value.problems)


# -- shipped profiles ------------------------------------------------------------------------------


def test_every_shipped_profile_loads() -> None:
    names = list_profiles()
    assert {"gpio-4btn-rpi", "gpio-3btn-rpi", "gpio-5btn-rpi", "serial-4btn", "serial-5btn"} <= set(names)
    for name in names:
        profile = load_profile(name)
        assert profile.button_count == len(profile.buttons)
        assert check_panel(name, "/dev/ttyUSB0" if isinstance(profile, SerialProfile) else None) == []


def test_the_four_button_panel_is_the_classic_scale_in_vietnamese() -> None:
    profile = load_profile("gpio-4btn-rpi")
    assert isinstance(profile, GpioProfile)
    assert [(b.score, b.label, b.text) for b in profile.buttons] == [
        (4, "very_satisfied", "Rất hài lòng"),
        (3, "satisfied", "Hài lòng"),
        (2, "neutral", "Bình thường"),
        (1, "dissatisfied", "Không hài lòng"),
    ]
    assert profile.buzzer is not None and profile.done_button is not None
    assert all(b.led is not None for b in profile.buttons)
    assert profile.button(1).label == "very_satisfied"


def test_profiles_load_by_name_or_by_path(tmp_path: Path) -> None:
    source = Path(load_profile("serial-4btn").source)
    copy = tmp_path / "my-panel.yaml"
    copy.write_text(source.read_text(encoding="utf-8"), encoding="utf-8")
    assert load_profile(str(copy)).model == load_profile("serial-4btn").model


# -- shorthand -------------------------------------------------------------------------------------


def test_pin_shorthand_is_normalised() -> None:
    profile = parse_profile(
        gpio(
            [
                {"pin": 17, "led": "GPIO5", "score": 2, "label": "satisfied"},
                {"pin": {"number": 27, "pull_up": False}, "led": "BCM6", "score": 1, "label": "dissatisfied"},
            ],
            buzzer=18,
        )
    )
    assert isinstance(profile, GpioProfile)
    first, second = profile.buttons
    assert first.pin.number == 17 and first.pin.pull_up is True
    assert first.led is not None and first.led.number == 5
    assert second.pin.number == 27 and second.pin.pull_up is False
    assert second.led is not None and second.led.number == 6
    assert profile.buzzer is not None and profile.buzzer.number == 18
    # A button without text gets the standard Vietnamese text of its label.
    assert first.text == DEFAULT_TEXT["satisfied"] == "Hài lòng"


def test_usb_id_shorthand_is_normalised() -> None:
    profile = load_profile("serial-4btn")
    assert isinstance(profile, SerialProfile) and profile.usb is not None
    assert (profile.usb.vid, profile.usb.pid) == (0x1A86, 0x7523)
    assert str(profile.usb) == "usb:1a86:7523"


# -- mistakes, each with its key path --------------------------------------------------------------


def test_a_pin_used_twice_names_both_key_paths() -> None:
    found = problems_of(
        gpio(
            [
                {"pin": 17, "led": 5, "score": 2, "label": "satisfied"},
                {"pin": 27, "led": 17, "score": 1, "label": "dissatisfied"},
            ]
        )
    )
    assert found == {"buttons[1].led": "GPIO 17 is used by buttons[0].pin"}


def test_a_shared_led_is_allowed_when_every_user_says_so() -> None:
    shared = {"number": 5, "shared": True}
    profile = parse_profile(
        gpio(
            [
                {"pin": 17, "led": shared, "score": 2, "label": "satisfied"},
                {"pin": 27, "led": shared, "score": 1, "label": "dissatisfied"},
            ]
        )
    )
    assert isinstance(profile, GpioProfile)
    found = problems_of(
        gpio(
            [
                {"pin": 17, "led": shared, "score": 2, "label": "satisfied"},
                {"pin": 27, "led": 5, "score": 1, "label": "dissatisfied"},
            ]
        )
    )
    assert found == {"buttons[1].led": "GPIO 5 is used by buttons[0].led"}


def test_an_unknown_pin_is_named_by_key_path() -> None:
    found = problems_of(gpio([{"pin": 17, "score": 1, "label": "neutral"}], buzzer=42))
    assert list(found) == ["buzzer"]
    assert found["buzzer"].startswith("GPIO 42 is not on the rpi-40pin header")


def test_reserved_and_special_pins() -> None:
    found = problems_of(
        gpio(
            [
                {"pin": 0, "score": 2, "label": "satisfied"},
                {"pin": 2, "score": 1, "label": "dissatisfied"},
            ]
        )
    )
    assert "HAT ID EEPROM" in found["buttons[0].pin"]
    assert "allow_special" in found["buttons[1].pin"]
    ok = parse_profile(
        gpio(
            [
                {"pin": 17, "score": 2, "label": "satisfied"},
                {"pin": {"number": 2, "allow_special": True}, "score": 1, "label": "dissatisfied"},
            ]
        )
    )
    assert ok.button_count == 2


def test_shape_errors_carry_key_paths() -> None:
    found = problems_of(
        gpio(
            [
                {"pin": 17, "score": 1, "label": "neutral", "colour": "red"},
                {"pin": "SDA", "score": 11, "label": "great"},
            ],
            debounce_ms=-1,
        )
    )
    assert found["buttons[0].colour"] == "unknown key"
    assert "not a pin" in found["buttons[1].pin"]
    assert "buttons[1].score" in found and "buttons[1].label" in found
    assert "debounce_ms" in found


def test_two_buttons_with_one_label_or_score() -> None:
    found = problems_of(
        gpio([{"pin": 17, "score": 1, "label": "neutral"}, {"pin": 27, "score": 1, "label": "neutral"}])
    )
    assert found == {
        "buttons[1].label": "neutral is also the label of buttons[0]",
        "buttons[1].score": "score 1 is also the score of buttons[0]",
    }


def test_a_button_pin_cannot_be_shared() -> None:
    found = problems_of(gpio([{"pin": {"number": 17, "shared": True}, "score": 1, "label": "neutral"}]))
    assert "cannot be shared" in found["buttons[0].pin.shared"]


def test_kind_picks_the_model_and_is_required() -> None:
    assert problems_of({"model": "x", "buttons": []}) == {"kind": "required key is missing"}
    assert "gpio, serial" in problems_of({"kind": "i2c", "model": "x"})["kind"]


def test_serial_heartbeat_must_match_the_cfg_sent_to_the_mcu() -> None:
    data = load_profile("serial-4btn").model_dump(mode="json")
    data["mcu_config"]["hb_ms"] = 500
    assert "heartbeat_ms 1000" in problems_of(data)["mcu_config.hb_ms"]
    data["mcu_config"] = {"Bad Key": 1}
    assert "mcu_config" in problems_of(data)


def test_bad_profiles_are_config_errors_and_value_errors() -> None:
    # Both the config layer's and Python's natural `except` catch them.
    assert issubclass(BadProfile, ConfigError) and issubclass(BadProfile, ValueError)


# -- the config layer's view: check_panel ----------------------------------------------------------


def test_check_panel_reports_profile_and_port_problems_by_key() -> None:
    assert check_panel("no-such-panel")[0][0] == "profile"
    assert check_panel("gpio-4btn-rpi", "/dev/ttyUSB0") == [("port", "a GPIO panel has no serial port; remove port")]
    assert check_panel("serial-4btn", "ttyUSB0")[0][0] == "port"
    assert check_panel("serial-4btn", "usb:zz:1")[0][0] == "port"
    assert check_panel("serial-4btn", "usb:1a86:7523") == []
    assert check_panel("serial-4btn") == []  # the profile's USB id finds the port


def test_check_panel_names_the_key_path_and_the_file_for_a_broken_profile(tmp_path: Path) -> None:
    bad = tmp_path / "twice.yaml"
    bad.write_text(
        "kind: gpio\nmodel: twice\nbuttons:\n"
        "  - {pin: 17, score: 2, label: satisfied}\n"
        "  - {pin: 17, score: 1, label: dissatisfied}\n",
        encoding="utf-8",
    )
    assert check_panel(str(bad)) == [("buttons[1].pin", "GPIO 17 is used by buttons[0].pin (in profile twice.yaml)")]
    (tmp_path / "broken.yaml").write_text("kind: gpio\nbuttons: [\n", encoding="utf-8")
    [(key, msg)] = check_panel(str(tmp_path / "broken.yaml"))
    assert key == "(top level)" and "not valid YAML" in msg


def test_check_panel_finds_clashes_with_other_sections_through_one_registry() -> None:
    resources = Resources()
    resources.reserve("gpio", 18, "relays.zones[0].pin")
    resources.reserve("serial", "/dev/ttyUSB0", "relays.port")
    found = dict(check_panel("gpio-4btn-rpi", resources=resources))
    assert found["buzzer"] == "GPIO 18 is used by relays.zones[0].pin (in profile gpio-4btn-rpi.yaml)"
    found = dict(check_panel("serial-4btn", "/dev/ttyUSB0", resources=resources))
    assert found["port"] == "serial port /dev/ttyUSB0 is used by relays.port"


# -- the registry itself ---------------------------------------------------------------------------


def test_resources_name_the_holder_and_release_cleanly() -> None:
    r = Resources()
    r.reserve("gpio", 17, "panel.buttons[0].pin")
    r.reserve("gpio", 17, "panel.buttons[0].pin")  # the same holder again is fine
    with pytest.raises(ResourceBusy, match=r"^GPIO 17 is used by panel\.buttons\[0\]\.pin$"):
        r.reserve("gpio", 17, "relays.zones[1].pin")
    r.reserve("camera", "/dev/video0", "camera.counter")
    r.reserve("audio", "hw:1", "speaker", shared=True)
    r.reserve("audio", "hw:1", "tts", shared=True)
    r.release_all("panel")
    assert r.holder("gpio", 17) is None
    assert r.held() == {"camera /dev/video0": ["camera.counter"], "audio device hw:1": ["speaker", "tts"]}
    r.release("audio", "hw:1", "speaker")
    r.release("audio", "hw:1", "speaker")
    assert r.holder("audio", "hw:1") == "tts"
