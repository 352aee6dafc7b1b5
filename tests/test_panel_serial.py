"""The serial panel: real pyserial on a pseudo-terminal, with a simulated MCU on the other end."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from drivers.panel import open_panel
from drivers.panel.base import Press
from drivers.panel.serial import SerialPanel, find_port
from drivers.profiles import SerialProfile
from drivers.resources import Resources
from edge.exceptions import ResourceBusy
from sim.serial_mcu import Noise, SerialMcu
from tests.panel_fixtures import Recorder, fast_serial_profile, wait_until

McuFactory = Callable[..., SerialMcu]


@pytest.fixture
def make_mcu(tmp_path: Path) -> Iterator[McuFactory]:
    """Start simulated MCUs (50 ms repeats) behind a by-id style link; close them after."""
    started: list[SerialMcu] = []

    def make(**kwargs: object) -> SerialMcu:
        kwargs.setdefault("repeat_ms", 50)
        kwargs.setdefault("link", tmp_path / f"usb-commune_panel_{len(started)}-if00")
        mcu = SerialMcu(**kwargs)  # type: ignore[arg-type]
        started.append(mcu)
        return mcu.start()

    yield make
    for mcu in started:
        mcu.close()


@pytest.fixture
def profile() -> SerialProfile:
    return fast_serial_profile()


def open_serial(profile: SerialProfile, port: str) -> SerialPanel:
    panel = open_panel(profile, port=port, resources=Resources())
    assert isinstance(panel, SerialPanel)
    return panel


# -- handshake -------------------------------------------------------------------------------------


def test_handshake_ping_hello_then_the_profiles_settings(make_mcu: McuFactory, profile: SerialProfile) -> None:
    mcu = make_mcu()
    with open_serial(profile, mcu.path) as panel:
        rec = Recorder().start(panel)
        assert rec.wait_event("connected")
        assert mcu.wait_for(lambda m: m.cfg_frames >= 1)
        detail = rec.last("connected").detail
    assert detail["model"] == "ce-panel-4" and detail["fw"] == "1.2.0" and detail["buttons"] == 4
    assert mcu.pings >= 1
    assert mcu.cfg == {k: str(v) for k, v in profile.mcu_config.items()}
    assert "firmware_mismatch" not in rec.kinds()


def test_wrong_firmware_is_reported_but_the_panel_still_works(make_mcu: McuFactory, profile: SerialProfile) -> None:
    mcu = make_mcu(model="ce-panel-9", fw="0.9.1", buttons=5)
    with open_serial(profile, mcu.path) as panel:
        rec = Recorder().start(panel)
        assert rec.wait_event("firmware_mismatch")
        problems = " | ".join(rec.last("firmware_mismatch").detail["problems"])
        mcu.press(2)
        assert rec.wait_presses(1)
        mcu.press(5)  # the profile has no button 5: acknowledged, reported, never a rating
        assert rec.wait_event("error")
        assert mcu.wait_acked(2)
    assert "model ce-panel-9" in problems and "firmware 0.9.1" in problems and "5 buttons" in problems
    assert [p.button for p in rec.presses] == [2]
    assert rec.last("error").detail["code"] == "unknown_button"
    assert panel.stats.unknown_buttons == 1


# -- presses, ACKs and duplicates --------------------------------------------------------------------


def test_a_press_is_delivered_then_acknowledged_and_thanked(make_mcu: McuFactory, profile: SerialProfile) -> None:
    mcu = make_mcu()
    with open_serial(profile, mcu.path) as panel:
        rec = Recorder(ack=False).start(panel)
        sent = mcu.press(3)
        assert rec.wait_presses(1)
        press = rec.presses[0]
        # Nothing is acknowledged until the service says the press is on disk.
        assert mcu.acked == []
        panel.acknowledge(press)
        panel.set_led(press.button, "thanks")
        panel.beep(80)
        assert mcu.wait_acked(1)
        assert mcu.wait_for(lambda m: m.leds.get("3") == "thanks" and m.beeps == [80])
    assert (press.button, press.mseq, press.uptime_ms, press.key) == (3, sent.mseq, sent.uptime_ms, sent.key)
    assert mcu.acked == [sent]


def test_repeats_of_a_press_being_committed_are_ignored(make_mcu: McuFactory, profile: SerialProfile) -> None:
    mcu = make_mcu()
    commit_may_finish = threading.Event()
    with open_serial(profile, mcu.path) as panel:
        rec = Recorder().start(panel)
        rec.commit = lambda press: commit_may_finish.wait(10)
        mcu.press(1)
        # The MCU repeats the BTN every 50 ms while the disk is slow; the host sees the repeats.
        assert wait_until(lambda: panel.stats.duplicates >= 3)
        assert mcu.acked == []
        commit_may_finish.set()
        assert mcu.wait_acked(1)
        assert rec.wait_presses(1)
    assert len(rec.presses) == 1
    assert panel.stats.presses == 1


def test_a_lost_ack_is_sent_again_when_the_mcu_repeats(make_mcu: McuFactory, profile: SerialProfile) -> None:
    mcu = make_mcu(noise=Noise(drop_acks=1.0))
    with open_serial(profile, mcu.path) as panel:
        rec = Recorder().start(panel)
        mcu.press(4)
        assert rec.wait_presses(1)
        # Every ACK is lost on the wire for a while: the MCU keeps repeating, the host keeps answering.
        assert mcu.wait_for(lambda m: m.stats.acks_dropped >= 3)
        mcu.noise.drop_acks = 0.0
        assert mcu.wait_acked(1)
    assert len(rec.presses) == 1
    assert panel.stats.reacks >= 2


def test_a_failed_commit_leaves_the_press_unacknowledged_and_it_comes_back(
    make_mcu: McuFactory, profile: SerialProfile
) -> None:
    mcu = make_mcu()
    with open_serial(profile, mcu.path) as panel:
        rec = Recorder().start(panel)
        failures = [OSError("disk full")]

        def commit(press: Press) -> None:
            if failures:
                raise failures.pop()

        rec.commit = commit
        sent = mcu.press(2)
        assert mcu.wait_acked(1)
    assert [p.key for p in rec.presses] == [sent.key]
    assert panel.stats.callback_errors == 1
    assert panel.stats.presses == 2  # handed over twice, committed once


def test_a_restarted_mcu_counts_from_zero_and_its_presses_are_new(make_mcu: McuFactory) -> None:
    profile = fast_serial_profile(heartbeat_ms=100)  # a restart shows as uptime going backwards in HB
    mcu = make_mcu()
    with open_serial(profile, mcu.path) as panel:
        rec = Recorder().start(panel)
        before = mcu.press(1)
        assert mcu.wait_acked(1)
        assert wait_until(lambda: (panel.mcu_uptime_ms or 0) >= 50)  # the host has heard a heartbeat
        mcu.reboot()
        after = mcu.press(1)
        assert mcu.wait_acked(2)
        assert wait_until(lambda: panel.stats.mcu_restarts == 1)
    assert before.mseq == after.mseq == 0
    assert [p.key for p in rec.presses] == [before.key, after.key]


@pytest.mark.parametrize("how", ["unplugged", "reset_in_place"])
def test_an_ack_is_never_sent_to_a_restarted_mcu_for_an_old_press(
    make_mcu: McuFactory, profile: SerialProfile, how: str
) -> None:
    # The commit of press A is slow; meanwhile the MCU restarts (USB cable pulled, or a watchdog reset
    # behind a USB-UART bridge that keeps the port open), and a new press B gets A's mseq (0). The
    # late ACK for A must not reach the MCU, or B would be cancelled and lost.
    mcu = make_mcu()
    gates = [threading.Event(), threading.Event()]  # one per commit, opened by the test
    with open_serial(profile, mcu.path) as panel:
        rec = Recorder().start(panel)
        rec.commit = lambda press: gates[panel.stats.presses - 1].wait(10)
        assert rec.wait_event("connected")
        a = mcu.press(1)
        assert wait_until(lambda: panel.stats.presses == 1)
        if how == "unplugged":
            mcu.unplug()
            # (Events queue behind the slow commit on the dispatcher thread, so watch the state.)
            assert wait_until(lambda: not panel.connected)
            mcu.replug(reboot=True)
            assert wait_until(lambda: panel.connected)
        else:
            hellos = panel.stats.hellos
            mcu.reboot()
            assert wait_until(lambda: panel.stats.hellos > hellos)
        b = mcu.press(2)
        assert mcu.wait_for(lambda m: m.unacked == 1 and m.stats.btn_sent == 2)  # B is on the wire
        gates[0].set()  # A is committed and acknowledged; B's commit starts and waits
        assert wait_until(lambda: panel.stats.presses == 2)
        # Frames reach the MCU in order: once it has seen this LED frame, it has seen any ACK before it.
        panel.set_led("all", "on")
        assert mcu.wait_for(lambda m: m.leds.get("all") == "on")
        assert mcu.acked == []
        assert mcu.stats.stray_acks == 0
        gates[1].set()
        assert mcu.wait_acked(1)
        assert rec.wait_presses(2)
    assert a.mseq == b.mseq == 0
    assert [p.key for p in rec.presses] == [a.key, b.key]
    assert mcu.acked == [b]
    assert panel.stats.deferred_acks == 1


# -- the line and the cable ------------------------------------------------------------------------


def test_unplug_and_replug_under_a_new_name(make_mcu: McuFactory, profile: SerialProfile) -> None:
    mcu = make_mcu()
    with open_serial(profile, mcu.path) as panel:
        rec = Recorder().start(panel)
        assert rec.wait_event("connected")  # (a press may even beat the handshake; not the point here)
        mcu.press(1)
        assert rec.wait_presses(1)
        old_tty = panel.port_path and Path(panel.port_path).resolve()
        mcu.unplug()
        assert rec.wait_event("disconnected")
        assert rec.last("disconnected").detail["reason"] == "port_lost"
        assert not panel.connected
        new_tty = mcu.replug(new_path=True)
        assert rec.wait_event("connected", count=2)
        mcu.press(4)
        assert rec.wait_presses(2)
        assert mcu.wait_acked(1)
    assert new_tty != str(old_tty)
    assert [p.button for p in rec.presses] == [1, 4]
    assert panel.stats.reconnects == 1 and panel.stats.disconnects == 1


def test_a_silent_mcu_is_disconnected_after_three_heartbeats_and_back_when_it_talks(make_mcu: McuFactory) -> None:
    profile = fast_serial_profile(heartbeat_ms=100)
    mcu = make_mcu()
    with open_serial(profile, mcu.path) as panel:
        rec = Recorder().start(panel)
        assert rec.wait_event("connected")
        mcu.silence(True)
        assert rec.wait_event("disconnected")
        assert rec.last("disconnected").detail["reason"] == "silence"
        mcu.silence(False)
        assert rec.wait_event("connected", count=2)
        mcu.press(2)
        assert rec.wait_presses(1)
    assert rec.kinds().count("disconnected") == 1


def test_a_panel_plugged_in_after_start_is_found(tmp_path: Path, profile: SerialProfile) -> None:
    link = tmp_path / "usb-late-panel"
    panel = SerialPanel(profile, port=str(link), resources=Resources(), reconnect_s=0.05)
    with panel:
        rec = Recorder().start(panel)
        assert rec.wait_event("disconnected")
        assert rec.last("disconnected").detail["reason"] == "not_found"
        with SerialMcu(repeat_ms=50, link=link) as mcu:
            assert rec.wait_event("connected")
            mcu.press(3)
            assert rec.wait_presses(1)


def test_mcu_errors_become_panel_events(make_mcu: McuFactory, profile: SerialProfile) -> None:
    mcu = make_mcu(reject_cfg=("brightness",))
    with open_serial(profile, mcu.path) as panel:
        rec = Recorder().start(panel)
        assert rec.wait_event("error")  # ERR BADCFG brightness, in answer to our CFG
        mcu.send_err("STUCK", "2")
        assert rec.wait_event("stuck")
        mcu.send_err("FREED", "2")
        assert rec.wait_event("released")
    assert rec.last("error").detail == {"code": "BADCFG", "text": "brightness"}
    assert rec.last("stuck").detail == {"button": 2}
    assert panel.stats.mcu_errors == 3


def test_garbage_on_the_line_is_counted_not_fatal(make_mcu: McuFactory, profile: SerialProfile) -> None:
    mcu = make_mcu()
    with open_serial(profile, mcu.path) as panel:
        rec = Recorder().start(panel)
        assert rec.wait_event("connected")
        mcu.send_raw(b"\x00\xff garbage $BTN 1 2 3*0000\r\n$" + b"Z" * 500 + b"\r\n")
        mcu.press(1)
        assert rec.wait_presses(1)
        frames = panel.stats.frames
    assert frames.bad_crc == 1 and frames.overlong == 1 and frames.garbage_bytes > 0


def test_the_port_is_reserved_once(make_mcu: McuFactory, profile: SerialProfile) -> None:
    mcu = make_mcu()
    resources = Resources()
    with (
        SerialPanel(profile, port=mcu.path, resources=resources),
        pytest.raises(ResourceBusy, match=r"serial port .* is used by panel\.port"),
    ):
        SerialPanel(profile, port=mcu.path, resources=resources, holder="other")
    assert resources.held() == {}


def test_find_port_follows_a_path_and_reports_absence(tmp_path: Path) -> None:
    assert find_port(str(tmp_path / "nothing")) is None
    assert find_port(str(tmp_path)) == str(tmp_path)


def test_close_is_idempotent_and_quick_to_wake_the_reader(make_mcu: McuFactory, profile: SerialProfile) -> None:
    mcu = make_mcu()
    panel = open_serial(profile, mcu.path)
    rec = Recorder().start(panel)
    assert rec.wait_event("connected")
    panel.close()
    panel.close()
    assert panel.closed and not panel.connected
    panel.set_led("all", "off")  # after close: dropped and counted, not raised
    assert panel.stats.write_errors >= 1


# -- the acceptance run ----------------------------------------------------------------------------


def test_ten_thousand_presses_through_a_noisy_line_are_each_delivered_exactly_once(make_mcu: McuFactory) -> None:
    profile = fast_serial_profile(mcu_config={"hb_ms": 1000, "repeat_ms": 100})
    noise = Noise(corrupt=0.01, duplicate=0.01, split=0.01, garbage=0.005, drop_acks=0.005)
    mcu = make_mcu(noise=noise, seed=20261121, hb_ms=1000, repeat_ms=100, max_pending=16)
    delivered: Counter[str] = Counter()
    with open_serial(profile, mcu.path) as panel:
        rec = Recorder().start(panel)
        rec.commit = lambda press: delivered.update([press.key or ""])
        rec.presses = []  # keep memory flat: the Counter is the record
        sent = [mcu.press(1 + i % 4) for i in range(10_000)]
        assert mcu.wait_acked(10_000, timeout=240)
        stats = panel.stats
    assert set(delivered) == {p.key for p in sent}
    assert max(delivered.values()) == 1
    # The noise really happened, and every bad frame was counted.
    assert mcu.stats.corrupted > 50 and mcu.stats.duplicated > 50 and mcu.stats.split > 50
    assert stats.frames.bad_crc + stats.frames.bad_grammar + stats.frames.truncated > 0
    assert stats.duplicates > 0 and stats.reacks > 0
    assert stats.callback_errors == 0
