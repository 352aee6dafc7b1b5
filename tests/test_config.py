"""Configuration: the starter validates, env overrides apply, every error names its key path."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from edge.config import env_overrides, load_config, starter_config
from edge.exceptions import ConfigError
from sim.harness import run_edge


@pytest.mark.parametrize("role", ["counter", "loudspeaker"])
def test_init_writes_a_commented_config_that_validates(tmp_path: Path, role: str) -> None:
    result = run_edge(
        [
            "init",
            "--role",
            role,
            "--device",
            "loa-03",
            "--commune",
            "gia-ray",
            "--broker",
            "mqtts://server.local:8883",
            "--state-dir",
            str(tmp_path / "s"),
        ]
    )
    text = result.stdout
    assert "# This device's id" in text  # field descriptions become comments
    (tmp_path / "edge.toml").write_text(text)
    config = load_config(tmp_path / "edge.toml", environ={})
    assert config.device.id == "loa-03"
    assert config.device.roles == [role]
    assert config.mqtt.address.tls and config.mqtt.address.port == 8883
    assert run_edge(["config", "validate", "--config", str(tmp_path / "edge.toml")]).returncode == 0


def test_environment_overrides_any_value(tmp_path: Path) -> None:
    (tmp_path / "edge.toml").write_text(starter_config("counter", "counter-01", "gia-ray", "mqtt://a:1883"))
    env = {
        "EDGE_MQTT__BROKER": "mqtt://b:1884",
        "EDGE_SYNC__MAX_INFLIGHT": "4",
        "EDGE_DEVICE__ROLES": '["counter","loudspeaker"]',
        "EDGE_RELAYS__PROFILE": "gpio-4ch-rpi",  # a loudspeaker needs its relay board
    }
    config = load_config(tmp_path / "edge.toml", environ=env)
    assert config.mqtt.address.host == "b" and config.mqtt.address.port == 1884
    assert config.sync.max_inflight == 4
    assert config.device.roles == ["counter", "loudspeaker"]
    shown = run_edge(["config", "show", "--json", "--config", str(tmp_path / "edge.toml")], env=env)
    assert json.loads(shown.stdout)["mqtt"]["broker"] == "mqtt://b:1884"
    assert env_overrides({"EDGE_CONFIG": "/x", "OTHER__X": "1"}) == {}


def test_validate_lists_every_error_with_its_key_path(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        """
[device]
id = "Counter 01"
commune = "gia-ray"
roles = ["counter", "fountain"]
colour = "blue"

[mqtt]
broker = "http://server"

[sync]
max_inflight = 0
reconnect_min_s = 10
reconnect_max_s = 1
"""
    )
    result = run_edge(["config", "validate", "--config", str(bad), "--json"], check=False)
    assert result.returncode == 2
    errors = {e["key"]: e["error"] for e in json.loads(result.stdout)["errors"]}
    assert set(errors) >= {"device.id", "device.roles[1]", "device.colour", "mqtt.broker", "sync.max_inflight"}
    assert errors["device.colour"] == "unknown key"
    assert "mqtt://" in errors["mqtt.broker"]
    # The human form: one line per error, each starting with its key path, on stderr.
    human = run_edge(["config", "validate", "--config", str(bad)], check=False)
    assert human.returncode == 2
    assert "  device.id:" in human.stderr and "  mqtt.broker:" in human.stderr


def test_broken_toml_and_missing_file_are_one_line_errors(tmp_path: Path) -> None:
    (tmp_path / "broken.toml").write_text("[device\nid = ")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(tmp_path / "broken.toml", environ={})
    result = run_edge(["status", "--config", str(tmp_path / "nope.toml")], check=False)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "does not exist" in result.stderr


def test_starter_is_valid_toml_for_every_option(tmp_path: Path) -> None:
    data = tomllib.loads(starter_config("counter"))
    assert set(data) == {"device", "mqtt", "store", "sync", "health", "commands", "panel", "rating"}
    loudspeaker = tomllib.loads(starter_config("loudspeaker"))
    assert set(loudspeaker) == {"device", "mqtt", "store", "sync", "health", "commands"} | {
        "relays",
        "speaker",
        "speech",
        "broadcast",
    }
