"""USB/serial relay boards on a pty: real pyserial and pymodbus' RTU client against simulated boards.

The LCUS board checks every frame's sum; the Modbus board is a slave built on pymodbus' own RTU
framer. Boards stop answering (hung) and vanish (unplugged), and come back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from drivers.relay import RelayBank, RelayFault, load_relay_profile, open_relays
from drivers.relay.profile import LcusRelayProfile, ModbusRelayProfile, parse_relay_profile
from drivers.resources import Resources
from sim.harness import wait_for
from sim.serial_relay import SimLcusBoard, SimModbusBoard

ZONES_THEN_AMP = ["zone-1", "zone-2", "zone-3", "amplifier"]


#: Reply timeouts in these tests: long enough that a loaded machine never looks like a dead board.
REPLY_S = 3.0


def lcus(**extra: Any) -> LcusRelayProfile:
    """The shipped LCUS-4 wiring, without the pause between frames (a pty needs none)."""
    data: dict[str, Any] = {
        "kind": "lcus",
        "model": "lcus-4",
        "amplifier": {"channel": 1},
        "zones": [{"name": "zone-1", "channel": 2}, {"name": "zone-2", "channel": 3}, {"name": "zone-3", "channel": 4}],
        "command_gap_ms": 0,
        "reply_timeout_s": REPLY_S,
    }
    profile = parse_relay_profile(data | extra)
    assert isinstance(profile, LcusRelayProfile)
    return profile


def frame(channel: int, state: int) -> bytes:
    """An LCUS frame, as the boards' documentation spells it: A0, channel, state, sum of the three."""
    return bytes([0xA0, channel, state, (0xA0 + channel + state) & 0xFF])


def modbus() -> ModbusRelayProfile:
    """The shipped 8-channel Modbus profile, with one long wait for each answer instead of a retry."""
    profile = load_relay_profile("modbus-8ch")
    assert isinstance(profile, ModbusRelayProfile)
    return profile.model_copy(update={"timeout_s": REPLY_S, "retries": 0})


# -- LCUS ---------------------------------------------------------------------------------------------


def test_lcus_board_left_on_is_opened_at_start_zones_first(tmp_path: Path) -> None:
    left_on = {1: True, 2: True, 3: True, 4: True}
    with (
        SimLcusBoard(4, closed=left_on, link=tmp_path / "ttyRELAY") as board,
        open_relays(lcus(), port=board.path, resources=Resources()) as bank,
    ):
        # An LCUS board never answers a frame: wait until the simulated board has taken them all.
        assert board.wait_for(lambda b: len(b.frames) == 4)
        assert board.states() == {1: False, 2: False, 3: False, 4: False}
        assert board.frames == [frame(2, 0), frame(3, 0), frame(4, 0), frame(1, 0)]
        assert board.bad_frames == [] and board.garbage == 0
        assert bank.problem is None and bank.where == str(tmp_path / "ttyRELAY")


def test_lcus_frames_and_sums_are_what_the_board_expects() -> None:
    with SimLcusBoard(4) as board, open_relays(lcus(), port=board.path, resources=Resources()) as bank:
        assert board.wait_for(lambda b: len(b.frames) == 4)
        del board.frames[:]
        bank.amplifier(True)
        bank.set_zones(["zone-3"])
        bank.set_zones(["zone-1"])
        assert board.wait_for(lambda b: len(b.frames) == 4)
        assert board.frames[0] == bytes.fromhex("A0 01 01 A2")  # the vendor's own example: channel 1 on
        assert board.frames == [frame(1, 1), frame(4, 1), frame(4, 0), frame(2, 1)]
        assert board.frames[1] == bytes.fromhex("A0 04 01 A5")
        assert board.states() == {1: True, 2: True, 3: False, 4: False}
        bank.amplifier(False)
        assert board.wait_for(lambda b: len(b.frames) == 5)
        assert board.frames[-1] == bytes.fromhex("A0 01 00 A1")  # and channel 1 off
        assert board.bad_frames == [] and board.queries == 0  # no readback: never asked


def test_lcus_without_readback_remembers_and_never_queries() -> None:
    with SimLcusBoard(4) as board, open_relays(lcus(), port=board.path, resources=Resources()) as bank:
        bank.set_zones(["zone-2"])
        assert bank.states() == {"amplifier": False, "zone-1": False, "zone-2": True, "zone-3": False}
        assert board.wait_for(lambda b: b.is_closed(3))
        assert board.queries == 0


def test_lcus_with_readback_confirms_every_switch() -> None:
    with SimLcusBoard(4, readback=True) as board, open_relays(lcus(readback=True), port=board.path) as bank:
        queries = board.queries
        bank.amplifier(True)
        bank.set_zones(["zone-1", "zone-3"])
        assert board.queries == queries + 2
        assert bank.states() == {"amplifier": True, "zone-1": True, "zone-2": False, "zone-3": True}
        assert board.queries == queries + 3


def test_lcus_readback_board_that_hangs_is_a_fault_and_recovers_when_it_answers() -> None:
    with SimLcusBoard(4, readback=True) as board, open_relays(lcus(readback=True), port=board.path) as bank:
        bank.amplifier(True)
        board.silence()
        with pytest.raises(RelayFault) as info:
            bank.set_zones(["zone-2"])
        message = f"relay board not answering on {board.path}: no answer to the status query within 3 s"
        assert str(info.value) == message
        assert bank.problem == message and bank.stats.faults == 1
        with pytest.raises(RelayFault):
            bank.states()

        board.silence(False)
        bank.set_zones(["zone-2"])  # written again: the hung board never switched it
        assert bank.problem is None
        assert board.states() == {1: True, 2: False, 3: True, 4: False}  # confirmed by readback already


def test_lcus_board_unplugged_is_a_fault_and_is_found_again_on_its_new_port(tmp_path: Path) -> None:
    link = tmp_path / "usb-1a86_USB_Serial-if00-port0"
    with SimLcusBoard(4, link=link) as board, open_relays(lcus(), port=str(link), resources=Resources()) as bank:
        bank.amplifier(True)
        old_pty = board.pty_path
        board.unplug()
        with pytest.raises(RelayFault, match=f"relay board not answering on {link}: writing failed"):
            bank.set_zones(["zone-1"])
        assert bank.problem is not None
        with pytest.raises(RelayFault, match=f"relay board not found at {link}"):
            bank.set_zones(["zone-1"])
        assert bank.problem == f"relay board not found at {link}"

        assert board.replug() != old_pty  # back as another /dev/pts/N, the link follows
        bank.set_zones(["zone-1"])
        assert bank.problem is None
        assert board.wait_for(lambda b: b.is_closed(2))
        # The replugged board powered up open; after the fault the bank writes the amplifier again
        # although it remembers it closed.
        frames = len(board.frames)
        bank.amplifier(True)
        assert board.wait_for(lambda b: len(b.frames) == frames + 1 and b.is_closed(1))
        assert board.states() == {1: True, 2: True, 3: False, 4: False}


def test_a_board_that_does_not_answer_at_start_is_opened_by_the_watchdog_once_it_does() -> None:
    with SimLcusBoard(4, readback=True, closed={1: True, 3: True}) as board:
        board.silence()
        # A short wait for answers: a retry that is too slow is simply retried again.
        with open_relays(lcus(readback=True, reply_timeout_s=0.5), port=board.path, resources=Resources()) as bank:
            assert bank.problem is not None and bank.problem.startswith("relay board not answering on")
            assert board.states() == {1: True, 2: False, 3: True, 4: False}  # still as the crash left it
            board.silence(False)
            # Nobody calls the bank: its watchdog keeps trying to open every relay.
            assert wait_for(lambda: bank.problem is None, timeout=30)
            assert board.states() == {1: False, 2: False, 3: False, 4: False}
            assert bank.stats.off_retries >= 1


# -- Modbus RTU ---------------------------------------------------------------------------------------


def test_modbus_board_left_on_is_opened_at_start_and_read_back() -> None:
    closed = dict.fromkeys(range(8), True)
    with SimModbusBoard(8, closed=closed) as board, open_relays(modbus(), port=board.path, resources=Resources()):
        assert board.states() == dict.fromkeys(range(8), False)
        writes = [(fc, addr) for fc, addr, _ in board.requests if fc == 5]
        assert writes == [(5, coil) for coil in (1, 2, 3, 4, 5, 6, 7, 0)]
        assert board.requests[-1] == (1, 0, 8)  # then every coil read back
        assert board.errors_sent == 0


def test_modbus_switches_coils_and_confirms_them() -> None:
    with SimModbusBoard(8) as board, open_relays(modbus(), port=board.path, resources=Resources()) as bank:
        del board.requests[:]
        bank.amplifier(True)
        bank.set_zones(["zone-7", "zone-2"])
        assert board.requests == [(5, 0, 1), (1, 0, 8), (5, 2, 1), (5, 7, 1), (1, 0, 8)]
        assert [n for n, on in board.states().items() if on] == [0, 2, 7]
        assert bank.states()["zone-7"] is True


def test_modbus_unit_from_the_config_overrides_the_profiles() -> None:
    with SimModbusBoard(8, unit=7) as board:
        with open_relays(modbus(), port=board.path, modbus_unit=7, resources=Resources()) as bank:
            bank.set_zones(["zone-1"])
            assert board.is_closed(1) and bank.problem is None
        others = board.other_units
        nobody = modbus().model_copy(update={"timeout_s": 0.5})  # unit 1: nobody answers, so wait briefly
        with open_relays(nobody, port=board.path, resources=Resources()) as bank:
            assert bank.problem is not None and "no reply from unit 1" in bank.problem
        assert board.other_units > others


def test_modbus_board_that_hangs_times_out_and_recovers() -> None:
    with SimModbusBoard(8) as board, open_relays(modbus(), port=board.path, resources=Resources()) as bank:
        bank.amplifier(True)
        board.silence()
        with pytest.raises(RelayFault) as info:
            bank.set_zones(["zone-4"])
        assert (
            str(info.value) == f"relay board not answering on {board.path}: no reply from unit 1 within 3 s (0 retries)"
        )
        assert bank.problem == str(info.value)
        assert not board.is_closed(4)
        board.silence(False)
        bank.set_zones(["zone-4"])
        assert bank.problem is None and board.is_closed(4) and board.is_closed(0)


def test_modbus_board_unplugged_and_replugged(tmp_path: Path) -> None:
    link = tmp_path / "usb-FTDI_RS485-if00-port0"
    with SimModbusBoard(8, link=link) as board, open_relays(modbus(), port=str(link), resources=Resources()) as bank:
        bank.amplifier(True)
        board.unplug()
        with pytest.raises(RelayFault):
            bank.set_zones(["zone-1"])
        with pytest.raises(RelayFault, match=f"relay board not found at {link}"):
            bank.states()
        board.replug()
        assert bank.states()["amplifier"] is False  # read back: the board powered up open
        bank.amplifier(True)
        bank.set_zones(["zone-1"])
        assert bank.problem is None and board.is_closed(0) and board.is_closed(1)


def test_modbus_board_refusing_a_coil_is_a_fault_with_the_exception_code() -> None:
    profile = parse_relay_profile(
        {
            "kind": "modbus",
            "model": "mb-4",
            "timeout_s": REPLY_S,
            "retries": 0,
            "amplifier": {"coil": 0},
            "zones": [{"name": "zone-1", "coil": 1}, {"name": "far", "coil": 6}],
        }
    )
    with SimModbusBoard(4) as board, open_relays(profile, port=board.path, resources=Resources()) as bank:
        assert bank.problem == f"relay board on {board.path} (unit 1) refused writing coil 6: Modbus exception 2"
        assert board.errors_sent >= 1
        # Every operation that names the missing coil fails the same way, until the profile is fixed,
        # and so does every read-back (the coils are read in one span, 0..6).
        with pytest.raises(RelayFault, match="refused writing coil 6"):
            bank.set_zones(["zone-1"])
        with pytest.raises(RelayFault, match=r"refused reading coils 0\.\.6: Modbus exception 2"):
            bank.amplifier(True)
        assert board.is_closed(0)  # written: only its confirmation failed


def test_all_off_opens_the_amplifier_even_when_a_zone_relay_fails() -> None:
    profile = parse_relay_profile(
        {
            "kind": "modbus",
            "model": "mb-4",
            "timeout_s": REPLY_S,
            "retries": 0,
            "readback": False,
            "amplifier": {"coil": 0},
            "zones": [{"name": "zone-1", "coil": 1}, {"name": "far", "coil": 6}],
        }
    )
    with SimModbusBoard(4) as board, open_relays(profile, port=board.path, resources=Resources()) as bank:
        bank.amplifier(True)
        assert board.is_closed(0)
        with pytest.raises(RelayFault, match="refused writing coil 6"):
            bank.all_off()
        assert not board.is_closed(0)  # the amplifier's power was cut all the same
        assert bank.problem is not None and "coil 6" in bank.problem


# -- both ---------------------------------------------------------------------------------------------


def test_the_port_is_reserved_once_and_released_at_close() -> None:
    resources = Resources()
    with SimLcusBoard(4) as board:
        bank: RelayBank = open_relays(lcus(), port=board.path, resources=resources)
        assert resources.held() == {f"serial port {board.path}": ["relays.port"]}
        with pytest.raises(ValueError, match=f"serial port {board.path} is used by relays.port"):
            open_relays(lcus(), port=board.path, resources=resources, holder="second")
        bank.close()
        assert resources.held() == {}
