"""`edge test relays`, run as a technician runs it (a subprocess), on simulated relays and on a board on a pty."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from drivers.relay import load_relay_profile
from sim.harness import edge_command, run_edge
from sim.serial_relay import SimLcusBoard, SimModbusBoard


def patient(tmp_path: Path, name: str) -> str:
    """A shipped profile as a file of its own, waiting 3 s for answers: a loaded machine is not a dead board."""
    text = Path(load_relay_profile(name).source).read_text(encoding="utf-8")
    path = tmp_path / f"{name}.yaml"
    path.write_text(text.replace("timeout_s: 0.5", "timeout_s: 3"), encoding="utf-8")
    assert load_relay_profile(str(path)).model_dump(exclude={"timeout_s"}) == load_relay_profile(name).model_dump(
        exclude={"timeout_s"}
    )
    return str(path)


@pytest.mark.parametrize("name", ["gpio-4ch-rpi", "lcus-4ch", "modbus-8ch"])
def test_edge_test_relays_clicks_each_relay_alone_on_simulated_hardware(tmp_path: Path, name: str) -> None:
    profile = patient(tmp_path, name)
    result = run_edge(["test", "relays", "--profile", profile, "--sim", "--click-s", "0.01", "--json"])
    report = json.loads(result.stdout)
    names = list(load_relay_profile(profile).relay_names)
    assert report["ok"] is True and report["clicked"] == names
    # While each relay was closed it was the only one; after each click every relay was open again.
    assert report["seen"] == [step for name in names for step in ([name], [])]


def test_edge_test_relays_against_an_lcus_board_on_a_pty(tmp_path: Path) -> None:
    link = tmp_path / "usb-1a86_USB_Serial-if00-port0"
    with SimLcusBoard(4, closed={3: True}, link=link) as board:
        result = subprocess.run(
            [*edge_command(), "test", "relays", "--profile", "lcus-4ch", "--port", str(link), "--click-s", "0.01"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert board.wait_for(lambda b: len(b.frames) >= 4 + 8 + 4)
        log = list(board.switch_log)

    lines = result.stdout.splitlines()
    assert lines[0] == f"relay board lcus-4 (lcus on {link}): amplifier and 3 zones; readback off"
    assert lines[1:] == [
        "every relay open",
        "amplifier: closed",
        "amplifier: open",
        "zone zone-1: closed",
        "zone zone-1: open",
        "zone zone-2: closed",
        "zone zone-2: open",
        "zone zone-3: closed",
        "zone zone-3: open",
        "all 4 relays clicked; every relay open",
    ]
    opened_at_start = [(2, False), (3, False), (4, False), (1, False)]
    clicks = [(1, True), (1, False), (2, True), (2, False), (3, True), (3, False), (4, True), (4, False)]
    assert log == opened_at_start + clicks + opened_at_start  # and everything opened again on the way out


def test_edge_test_relays_reads_a_modbus_board_named_in_the_config(tmp_path: Path) -> None:
    link = tmp_path / "usb-FTDI_RS485-if00-port0"
    config = tmp_path / "edge.toml"
    config.write_text(
        '[device]\nid = "loa-01"\ncommune = "gia-ray"\nroles = ["loudspeaker"]\n\n'
        '[mqtt]\nbroker = "mqtt://127.0.0.1:1883"\n\n'
        f'[relays]\nprofile = "{patient(tmp_path, "modbus-8ch")}"\nport = "{link}"\nmodbus_unit = 3\n'
    )
    with SimModbusBoard(8, unit=3, link=link) as board:
        result = run_edge(["test", "relays", "--config", str(config), "--click-s", "0.01"], check=False)
        assert result.returncode == 0, result.stderr
        writes = [(address, 1) for fc, address, _ in board.requests if fc == 5]
    lines = result.stdout.splitlines()
    assert lines[0] == f"relay board modbus-8ch (modbus on {link}): amplifier and 7 zones; readback on"
    assert lines[2:4] == ["amplifier: closed (the board reads closed)", "amplifier: open (the board reads open)"]
    assert lines[-1] == "all 8 relays clicked; every relay open"
    assert len(writes) == 8 + 16 + 8


def test_edge_test_relays_fails_in_one_line_when_the_board_is_absent(tmp_path: Path) -> None:
    result = run_edge(["test", "relays", "--profile", "lcus-4ch", "--port", str(tmp_path / "nothing")], check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == f"edge test: relay board not found at {tmp_path / 'nothing'}"


def test_edge_test_relays_without_relays_in_the_config(tmp_path: Path) -> None:
    config = tmp_path / "edge.toml"
    config.write_text(
        '[device]\nid = "counter-01"\ncommune = "gia-ray"\nroles = ["counter"]\n\n[mqtt]\nbroker = "mqtt://127.0.0.1:1883"\n'
    )
    result = run_edge(["test", "relays", "--config", str(config)], check=False)
    assert result.returncode == 1
    assert result.stderr.strip() == "edge test: no [relays] in the config; name a relay profile with --profile"
