"""Live configuration through the signed, retained ``cfg/desired`` (issue: signed commands)."""

from __future__ import annotations

import json
from typing import Any

from sim.harness import run_edge, wait_for
from tests.commands_fixtures import COMMUNE, DEVICE, CommandedDevice

TIMEOUT = 15.0


def desired(dev: CommandedDevice, version: int, config: dict[str, Any]) -> dict[str, Any]:
    """Send ``config.desired`` (retained, on cfg/desired) and return the device's cfg/reported."""
    dev.sender.send(DEVICE, "config.desired", {"version": version, "config": config}, dev.key)
    report = dev.sender.wait_reported(DEVICE, version, TIMEOUT)
    assert report is not None, dev.log()
    return report


def effective(dev: CommandedDevice) -> dict[str, Any]:
    out = run_edge(["config", "show", "--json"], env=dev.device.env)
    data: dict[str, Any] = json.loads(out.stdout)
    return data


def test_a_valid_config_is_applied_live_and_survives_a_restart(commanded: CommandedDevice) -> None:
    report = desired(commanded, 2, {"sync": {"max_inflight": 4}, "health": {"interval_s": 600}})

    assert report["status"] == "applied"
    assert effective(commanded)["sync"]["max_inflight"] == 4
    assert "restarting" not in commanded.log()  # both keys apply live

    commanded.restart()
    assert effective(commanded)["sync"]["max_inflight"] == 4
    # The retained cfg/desired comes back on reconnect and is recognised as already applied.
    assert wait_for(lambda: commanded.counters().get("cfg_desired_unchanged", 0) >= 1, TIMEOUT)
    assert commanded.counters().get("commands_rejected_replayed", 0) == 0


def test_a_stale_version_is_ignored(commanded: CommandedDevice) -> None:
    assert desired(commanded, 5, {"sync": {"max_inflight": 3}})["status"] == "applied"

    commanded.sender.send(
        DEVICE, "config.desired", {"version": 4, "config": {"sync": {"max_inflight": 9}}}, commanded.key
    )

    assert wait_for(lambda: commanded.counters().get("cfg_desired_unchanged", 0) >= 1, TIMEOUT)
    assert commanded.sender.wait_reported(DEVICE, 4, 0.5) is None  # nothing to report about it
    assert effective(commanded)["sync"]["max_inflight"] == 3


def test_an_invalid_config_is_rejected_with_its_key_path(commanded: CommandedDevice) -> None:
    report = desired(commanded, 2, {"sync": {"max_inflight": 0}})

    assert report["status"] == "rejected"
    assert report["reason"].startswith("sync.max_inflight:")
    assert effective(commanded)["sync"]["max_inflight"] == 16  # unchanged


def test_settings_that_only_the_device_may_change_are_refused(commanded: CommandedDevice) -> None:
    report = desired(commanded, 2, {"mqtt": {"broker": "mqtt://elsewhere.example:1883"}, "device": {"id": "x"}})

    assert report["status"] == "rejected"
    assert "mqtt.broker: can only be set in the local config file" in report["reason"]
    assert "device.id: can only be set in the local config file" in report["reason"]


def test_a_change_that_needs_a_restart_restarts_the_daemon_cleanly(commanded: CommandedDevice) -> None:
    statuses: list[dict[str, Any]] = []
    commanded.sender.link.subscribe(
        f"vn/{COMMUNE}/dev/{DEVICE}/status", lambda _t, payload: statuses.append(json.loads(payload))
    )

    report = desired(
        commanded, 2, {"device": {"roles": ["counter", "loudspeaker"]}, "relays": {"profile": "gpio-4ch-rpi"}}
    )

    assert report["status"] == "applied"
    assert wait_for(lambda: any(s["roles"] == ["counter", "loudspeaker"] for s in statuses), TIMEOUT), statuses
    assert "restarting with the new configuration" in commanded.log()
    assert commanded.daemon is not None and commanded.daemon.running  # same process, still up
