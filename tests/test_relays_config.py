"""`edge config validate` on [relays]: one registry for every section's pins and ports, key paths in errors.

Run as a technician runs it (a subprocess), on a device that is both a counter and a loudspeaker, so
the rating panel and the relay board share one Pi header.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

from edge.config import parse_config
from sim.harness import run_edge


def device_toml(tmp_path: Path, sections: str, roles: str = '["counter", "loudspeaker"]') -> Path:
    path = tmp_path / "edge.toml"
    path.write_text(
        f'[device]\nid = "loa-01"\ncommune = "gia-ray"\nroles = {roles}\n\n'
        f'[mqtt]\nbroker = "mqtt://127.0.0.1:1883"\n\n[store]\nstate_dir = "{tmp_path / "state"}"\n\n{sections}\n',
        encoding="utf-8",
    )
    return path


def validate(config: Path) -> tuple[int, list[dict[str, str]]]:
    result = run_edge(["config", "validate", "--json", "--config", str(config)], check=False)
    return result.returncode, json.loads(result.stdout)["errors"]


def test_a_pin_shared_by_a_relay_and_a_button_names_both_key_paths(tmp_path: Path) -> None:
    (tmp_path / "relays-on-17.yaml").write_text(
        "kind: gpio\nmodel: relays-17\nactive_high: false\namplifier: {pin: 24}\n"
        "zones:\n  - {name: zone-1, pin: 17}\n  - {name: zone-2, pin: 12}\n"
    )
    config = device_toml(
        tmp_path, f'[panel]\nprofile = "gpio-4btn-rpi"\n\n[relays]\nprofile = "{tmp_path / "relays-on-17.yaml"}"\n'
    )
    code, errors = validate(config)
    assert code == 2
    assert errors == [
        {
            "key": "relays.profile",
            "error": "zones[0].pin: GPIO 17 is used by panel.buttons[0].pin (in profile relays-on-17.yaml)",
        }
    ]


def test_the_shipped_relay_module_fits_beside_the_shipped_panel(tmp_path: Path) -> None:
    config = device_toml(tmp_path, '[panel]\nprofile = "gpio-4btn-rpi"\n\n[relays]\nprofile = "gpio-4ch-rpi"\n')
    assert validate(config) == (0, [])
    loaded = parse_config(tomllib.loads(config.read_text()))
    assert loaded.relays is not None and loaded.relays.profile == "gpio-4ch-rpi" and loaded.relays.port is None


def test_one_serial_port_for_the_panel_and_the_relays_is_an_error(tmp_path: Path) -> None:
    config = device_toml(
        tmp_path,
        '[panel]\nprofile = "serial-4btn"\nport = "/dev/ttyUSB0"\n\n'
        '[relays]\nprofile = "lcus-4ch"\nport = "/dev/ttyUSB0"\n',
    )
    code, errors = validate(config)
    assert code == 2
    assert errors == [{"key": "relays.port", "error": "serial port /dev/ttyUSB0 is used by panel.port"}]


def test_relays_section_mistakes_name_their_keys(tmp_path: Path) -> None:
    code, errors = validate(device_toml(tmp_path, '[relays]\nprofile = "gpio-4ch-rpi"\nport = "/dev/ttyUSB1"\n'))
    assert code == 2 and errors == [
        {"key": "relays.port", "error": "a GPIO relay board has no serial port; remove port"}
    ]

    code, errors = validate(device_toml(tmp_path, '[relays]\nprofile = "lcus-4ch"\nmodbus_unit = 4\n'))
    assert code == 2
    assert errors == [
        {"key": "relays.modbus_unit", "error": "only Modbus relay boards have a unit id (lcus board); remove it"}
    ]

    code, errors = validate(
        device_toml(tmp_path, '[relays]\nprofile = "modbus-8ch"\nport = "COM3"\nmodbus_unit = 300\n')
    )
    assert code == 2
    assert {e["key"] for e in errors} == {"relays.port", "relays.modbus_unit"}

    code, errors = validate(device_toml(tmp_path, '[relays]\nprofile = "relay-9ch"\n'))
    assert code == 2 and errors[0]["key"] == "relays.profile" and "no profile 'relay-9ch'" in errors[0]["error"]

    code, errors = validate(
        device_toml(tmp_path, '[relays]\nprofile = "modbus-8ch"\nport = "/dev/ttyUSB0"\nmodbus_unit = 5\n')
    )
    assert (code, errors) == (0, [])


def test_relays_on_a_device_without_the_loudspeaker_role_is_an_error(tmp_path: Path) -> None:
    config = device_toml(tmp_path, '[relays]\nprofile = "gpio-4ch-rpi"\n', roles='["counter"]')
    code, errors = validate(config)
    assert code == 2
    assert errors == [{"key": "relays", "error": "a relay board needs the 'loudspeaker' role in device.roles"}]
