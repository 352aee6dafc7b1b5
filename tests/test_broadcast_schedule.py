"""The schedule over time: quiet hours, not_after, programme times, stop_all, speech, the self-test with a
capture device, the safety cut, the live relay with failover, and a restart. Same real parts as
test_broadcast_play.py; the wall clock is injected where the test needs a given time of day.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from sim.audio import measure, write_tone

if TYPE_CHECKING:
    from tests.broadcast_fixtures import Loudspeaker

    MakeLoudspeaker = Callable[..., Loudspeaker]

pytest_plugins = ["tests.broadcast_fixtures"]

QUIET = [{"start": "22:00", "end": "05:30"}]


def quiet_spans() -> list[Any]:
    from edge.config.broadcast import QuietHours

    return [QuietHours.model_validate(span) for span in QUIET]


def at(hour: int, minute: int = 0, second: int = 0, day: date | None = None) -> datetime:
    """Today (or ``day``) at a local time of day, in this machine's zone."""
    now = datetime.now().astimezone()
    when = now.replace(hour=hour, minute=minute, second=second, microsecond=0)
    if day is not None:
        when = when.replace(year=day.year, month=day.month, day=day.day)
    return when


@pytest.fixture
def settable() -> type:
    from tests.broadcast_fixtures import SettableClock

    return SettableClock


# -- quiet hours and not_after ------------------------------------------------------------------------


def test_quiet_hours_hold_normal_items_and_let_priority_and_emergency_through(
    make_loudspeaker: MakeLoudspeaker, settable: type
) -> None:
    clock = settable(at(23, 0))
    ls = make_loudspeaker(clock=clock, quiet_hours=QUIET)
    ls.play("quang-cao", ls.tone_source(0.5, hz=500), "normal")
    ls.play("bao-so-3", ls.tone_source(0.5, hz=1000), "emergency")
    ls.play("lich-tiem", ls.tone_source(0.5, hz=700), "priority")

    assert ls.wait_state("bao-so-3", "finished") and ls.wait_state("lich-tiem", "finished")
    time.sleep(1.0)  # the scheduler has had every chance to start the normal item
    assert ls.states("quang-cao") == ["scheduled"]
    assert len(ls.card.items) == 2
    assert ls.service.scheduler.status()["quiet"] is True

    clock.set(at(5, 30, 0, date.today() + timedelta(days=1)))  # the next morning: quiet hours over
    ls.service.scheduler.wake()

    assert ls.wait_state("quang-cao", "finished")
    assert [round(hz, -2) for _, hz, _ in ls.played()] == [1000, 700, 500]


def test_an_item_past_not_after_is_expired_never_played_late(make_loudspeaker: MakeLoudspeaker, settable: type) -> None:
    clock = settable(at(23, 0))
    ls = make_loudspeaker(clock=clock, quiet_hours=QUIET)
    deadline = (clock() + timedelta(seconds=1.5)).isoformat()
    ls.play("hop-dan", ls.tone_source(0.5), "normal", not_after=deadline)

    assert ls.wait_state("hop-dan", "expired")
    expired = ls.events("hop-dan")[-1]
    assert expired["reason"] == "not_after" and expired["held_by"] == "quiet_hours"
    clock.set(at(6, 0, 0, date.today() + timedelta(days=1)))  # the quiet hours end, and still nothing plays
    ls.service.scheduler.wake()
    time.sleep(1.0)
    assert ls.states("hop-dan") == ["scheduled", "expired"]
    assert ls.card.items == [] and ls.relay_log == []


def test_an_item_queued_behind_an_emergency_past_its_not_after_is_expired(make_loudspeaker: MakeLoudspeaker) -> None:
    ls = make_loudspeaker()
    ls.play("canh-bao-lu", ls.tone_source(3.0, hz=1000), "emergency")
    assert ls.wait_state("canh-bao-lu", "started")
    ls.play(
        "thong-bao", ls.tone_source(0.5, hz=500), "normal", not_after=(ls.clock() + timedelta(seconds=1)).isoformat()
    )

    assert ls.wait_state("canh-bao-lu", "finished") and ls.wait_state("thong-bao", "expired")
    assert ls.wait_idle()
    assert ls.states("thong-bao") == ["scheduled", "expired"]
    assert len(ls.card.items) == 1


# -- programmes ------------------------------------------------------------------------------------


def test_a_programme_plays_at_its_times_and_reports_each_occurrence(
    make_loudspeaker: MakeLoudspeaker, settable: type
) -> None:
    today = date.today()
    clock = settable(at(5, 59, 58, today))
    ls = make_loudspeaker(clock=clock, occurrence_grace_s=600)
    weekday = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"][today.weekday()]
    ack = ls.play(
        "chuong-trinh-sang",
        ls.tone_source(0.5),
        times=["06:00", "06:30", "07:00"],
        days=[weekday],
        until=today.isoformat(),
    )
    assert ack["occurrence"] == at(6, 0, 0, today).isoformat()

    assert ls.wait_state("chuong-trinh-sang", "finished")  # 06:00
    clock.set(at(6, 50, 0, today))  # the device was busy (or off) past 06:30 and its grace
    ls.service.scheduler.wake()
    assert ls.wait_state("chuong-trinh-sang", "expired")
    clock.set(at(6, 59, 58, today))
    ls.service.scheduler.wake()
    assert ls.wait_state("chuong-trinh-sang", "finished", count=2)  # 07:00
    assert ls.wait_idle()

    events = ls.events("chuong-trinh-sang")
    by_state = [(e["state"], e["occurrence"]) for e in events if e["state"] != "scheduled"]
    assert by_state == [
        ("started", at(6, 0, 0, today).isoformat()),
        ("finished", at(6, 0, 0, today).isoformat()),
        ("expired", at(6, 30, 0, today).isoformat()),
        ("started", at(7, 0, 0, today).isoformat()),
        ("finished", at(7, 0, 0, today).isoformat()),
    ]
    assert events[-3]["reason"] == "late"
    assert ls.service.scheduler.items() == []  # until today: nothing left
    assert len(ls.card.items) == 2


# -- stop_all ----------------------------------------------------------------------------------------


def test_stop_all_silences_everything_opens_every_relay_and_drops_the_queue(make_loudspeaker: MakeLoudspeaker) -> None:
    ls = make_loudspeaker()
    ls.play("dang-phat", ls.tone_source(8.0), "emergency")
    ls.play("cho-1", ls.tone_source(0.5, hz=500), "normal")
    ls.play("cho-2", ls.tone_source(0.5, hz=500), "priority", times=["23:59"])
    assert ls.wait_state("dang-phat", "started")
    assert ls.wait_until(lambda: bool(ls.card.items) and ls.card.items[0].seconds > 0.5)

    asked = time.monotonic()
    result = ls.command("broadcast.stop_all", {})
    answered = time.monotonic()

    assert ls.closed_relays() == []  # open by the time the command is answered...
    assert answered - asked < 1.0  # ...which is within DESIGN.md §8's 1 s
    assert result["relays_off"] is True and result["stopped"] == "dang-phat"
    assert sorted(result["dropped"]) == ["cho-1", "cho-2"]
    assert ls.wait_until(lambda: ls.card.items[0].ended_at is not None)
    ended = ls.card.items[0].ended_at
    assert ended is not None and ended - asked < 1.0  # DESIGN.md §8: silent within 1 s
    assert ls.wait_state("dang-phat", "cancelled")
    for bid in ("dang-phat", "cho-1", "cho-2"):
        assert ls.events(bid)[-1]["reason"] == "stop_all"
    assert ls.service.scheduler.items() == []
    time.sleep(1.0)
    assert len(ls.card.items) == 1 and ls.closed_relays() == []


# -- speech, the self-test, the safety cut -----------------------------------------------------------


def test_a_text_is_spoken_and_measured(make_loudspeaker: MakeLoudspeaker) -> None:
    ls = make_loudspeaker()
    ls.play("loa-phuong", {"text": "UBND phường An Lạc mời bà con họp lúc 8h30 ngày 25/1.", "voice": "vi"})

    assert ls.wait_state("loa-phuong", "finished"), ls.events()
    done = ls.events("loa-phuong")[-1]
    assert done["source"]["kind"] == "text" and len(done["sha256"]) == 64
    (item,) = ls.card.items
    heard = measure(ls.card.samples(item), ls.card.rate)
    assert heard.sound_s > 2.0  # a sentence, not a click
    assert done["duration_s"] == pytest.approx(item.seconds, abs=0.2)
    assert done["level_dbfs"] == pytest.approx(heard.rms_dbfs, abs=1.0)


def test_no_audio_device_fails_the_item_and_no_relay_closes(make_loudspeaker: MakeLoudspeaker) -> None:
    ls = make_loudspeaker(speaker={"device": "no-such-card"})
    ls.play("khong-loa", ls.tone_source(0.5))
    assert ls.wait_state("khong-loa", "failed")
    assert ls.events("khong-loa")[-1]["reason"] == "no_audio_device"
    assert ls.relay_log == [] and ls.card.items == []
    assert ls.service.status()["speaker"]["problem"]


def test_relay_test_and_every_item_report_the_level_heard(make_loudspeaker: MakeLoudspeaker) -> None:
    ls = make_loudspeaker(speaker={"capture_device": "default"})
    ls.card.set_capture_tone(1000, rms_dbfs=-20.0)  # the microphone by the horns hears this

    ack = ls.command("relay.test", {"seconds": 0.6})

    assert ack["zones"] == list(("zone-1", "zone-2", "zone-3")) and ack["capture"] is True
    assert ls.wait_until(lambda: bool(ls.outbox.list_events(type="test")))
    (event,) = [e.data for e in ls.outbox.list_events(type="test")]
    assert event["test_id"] == ack["test_id"] and event["state"] == "finished"
    assert [z["zone"] for z in event["zones"]] == ["zone-1", "zone-2", "zone-3"]
    for zone in event["zones"]:
        assert zone["state"] == "played" and zone["relay"] is True and zone["amplifier"] is True
        assert zone["level_dbfs"] == pytest.approx(-20.0, abs=1.0)
        assert zone["heard_dbfs"] == pytest.approx(-20.0, abs=1.5)
    # One zone at a time, in the order asked.
    zones_closed = [name for _, name, closed in ls.relay_log if closed and name != "amplifier"]
    assert zones_closed == ["zone-1", "zone-2", "zone-3"]

    ls.card.set_capture(None)  # a dead horn: the microphone hears nothing
    ls.play("im-lang", ls.tone_source(0.6))
    assert ls.wait_state("im-lang", "finished")
    assert ls.events("im-lang")[-1]["heard_dbfs"] < -60


def test_the_maximum_on_time_cuts_the_item_and_the_next_one_plays(make_loudspeaker: MakeLoudspeaker) -> None:
    ls = make_loudspeaker(warm_up_s=0.2, idle_off_s=0.5, max_on_s=2.0)
    ls.play("qua-dai", ls.tone_source(6.0))

    assert ls.wait_state("qua-dai", "failed"), ls.events()
    failed = ls.events("qua-dai")[-1]
    assert failed["reason"] == "max_on_time" and failed["duration_s"] < 2.5
    assert ls.wait_until(lambda: ls.closed_relays() == [])
    assert ls.card.items[0].seconds < 2.5

    ls.play("sau-do", ls.tone_source(0.5))
    assert ls.wait_state("sau-do", "finished")


# -- live relay ------------------------------------------------------------------------------------------


def test_a_live_stream_fails_over_to_its_fallback_and_comes_back(
    make_loudspeaker: MakeLoudspeaker, tmp_path: Path
) -> None:
    ls = make_loudspeaker()
    radio = write_tone(tmp_path / "radio.mp3", hz=440, seconds=4.0, rms_dbfs=-14.0)
    live = ls.media.add_live("dai-phat-thanh", radio.read_bytes(), 4.0, content_type="audio/mpeg")
    fallback = ls.tone_source(1.0, hz=1500, name="mat-tin-hieu.wav")
    stall_s = 1.0
    ls.play("tiep-song", {"stream": ls.media.live_url("dai-phat-thanh"), "fallback": fallback, "stall_s": stall_s})
    assert ls.wait_state("tiep-song", "started")
    assert ls.wait_until(lambda: bool(ls.card.items) and ls.card.items[0].seconds > 2.5)

    live.stall()
    stalled_at = ls.card.items[0].seconds  # where the horns were, on the card's own clock
    assert ls.wait_state("tiep-song", "failover"), ls.events()
    assert ls.wait_until(lambda: ls.card.items[0].seconds > 6.0)
    live.resume()
    resumed_at = ls.card.items[0].seconds
    assert ls.wait_state("tiep-song", "stream_resumed"), ls.events()
    assert ls.wait_until(lambda: ls.card.items[0].seconds > 9.0)
    live.end()

    assert ls.wait_state("tiep-song", "finished"), ls.events()
    states = ls.states("tiep-song")
    assert states == ["scheduled", "started", "failover", "stream_resumed", "finished"]
    finished = ls.events("tiep-song")[-1]
    assert finished["failovers"] == 1 and len(finished["gaps_s"]) == 1
    # What the horns said: the station, then the fallback while it was away, then the station again.
    from tests.broadcast_fixtures import dominant_hz

    samples = ls.card.samples(ls.card.items[0])
    rate = ls.card.rate
    step = rate // 20  # what the horns said every 50 ms, as (seconds into the item, Hz)
    heard = [
        (i / rate, round(dominant_hz(samples[i : i + rate // 10], rate), -1))
        for i in range(0, len(samples) - rate // 10, step)
    ]
    first_fallback = next(t for t, hz in heard if hz == 1500)
    assert any(hz == 440 for t, hz in heard if t < stalled_at)
    assert first_fallback - stalled_at <= stall_s + 1.0
    assert any(hz == 440 for t, hz in heard if t > max(first_fallback, resumed_at))  # and back to the station


# -- a restart -----------------------------------------------------------------------------------------


def test_the_schedule_survives_a_restart_and_the_cut_item_resumes(
    make_loudspeaker: MakeLoudspeaker, tmp_path: Path
) -> None:
    state = tmp_path / "kept"
    first = make_loudspeaker(state_dir=state)
    later = (first.clock() + timedelta(hours=2)).isoformat()
    first.play("dang-doc", first.tone_source(4.0), "normal", on_preempt="resume")
    first.play("chieu-nay", first.tone_source(0.5), "normal", start_at=later)
    assert first.wait_state("dang-doc", "started")
    assert first.wait_until(lambda: bool(first.card.items) and first.card.items[0].seconds > 1.0)

    first.service.stop()  # the daemon stops (a config change, systemd restart)
    first.outbox.close()
    cut = first.card.items[0].seconds
    first.media.close()  # and it comes back offline: what it plays now comes from its own cache

    second = make_loudspeaker(state_dir=state)
    assert second.wait_state("dang-doc", "finished")
    states = second.states("dang-doc")
    assert states == ["scheduled", "started", "preempted", "resumed", "finished"]
    preempted = second.events("dang-doc")[2]
    assert preempted["reason"] == "shutdown"
    assert second.events("dang-doc")[3]["position_s"] == pytest.approx(cut, abs=0.3)
    assert second.card.items[-1].seconds == pytest.approx(4.0 - cut, abs=0.3)
    assert [i.broadcast_id for i in second.service.scheduler.items()] == ["chieu-nay"]
    assert second.wait_until(lambda: all(i.ready for i in second.service.scheduler.items()))  # its file too


class StuckSource:
    """A source that plays a second of a real file and then hangs in read(), as a decoder stuck on a
    dying SD card or a wedged network read would: the fault the safety net is for."""

    def __init__(self, inner: Any, release: threading.Event) -> None:
        self.inner = inner
        self.rate, self.channels, self.duration_s = inner.rate, inner.channels, inner.duration_s
        self._release = release
        self._frames = 0

    def read(self, frames: int) -> Any:
        if self._frames >= self.rate:
            self._release.wait()  # hangs until the test is over
        block = self.inner.read(frames)
        self._frames += len(block)
        return block

    def close(self) -> None:
        self.inner.close()


def test_a_hung_play_is_cut_by_the_maximum_on_time_and_the_loudspeaker_goes_on(
    make_loudspeaker: MakeLoudspeaker,
) -> None:
    ls = make_loudspeaker(warm_up_s=0.2, idle_off_s=0.5, max_on_s=2.5)
    release = threading.Event()
    real_open = ls.service.open_source

    def open_stuck(item: Any, start_s: float) -> Any:
        source = real_open(item, start_s)
        return StuckSource(source, release) if item.broadcast_id == "treo" else source

    ls.service.open_source = open_stuck  # type: ignore[method-assign]
    try:
        ls.play("treo", ls.tone_source(6.0))
        assert ls.wait_state("treo", "started")
        # The play thread hangs; the relay bank's own watchdog opens every relay at max_on_s.
        assert ls.wait_until(lambda: any(n == "amplifier" and not on for _, n, on in ls.relay_log)), ls.relay_log
        assert ls.closed_relays() == []
        assert ls.wait_state("treo", "failed"), ls.events()
        failed = ls.events("treo")[-1]
        assert failed["reason"] == "max_on_time" and "stuck" in failed["detail"]
        # The scheduler gave up on the hung play and serves the next item on a fresh player.
        ls.play("tiep-theo", ls.tone_source(0.5))
        assert ls.wait_state("tiep-theo", "finished"), ls.events()
    finally:
        release.set()


def test_the_maximum_on_time_cuts_everything_while_the_scheduler_thread_itself_hangs(
    make_loudspeaker: MakeLoudspeaker,
) -> None:
    """The scheduler thread hangs right after it closed the zones, before the first sample (here in
    opening the level meter, as ALSA's open of a wedged USB sound card does): nothing the scheduler
    could do opens the relays, and the relay bank's own watchdog opens them at max_on_s all the same."""
    ls = make_loudspeaker(warm_up_s=0.2, idle_off_s=0.5, max_on_s=2.5)
    hung_in: list[str] = []
    release = threading.Event()
    real_meter = ls.service.meter

    def meter_that_hangs() -> Any:
        if not hung_in:
            hung_in.append(threading.current_thread().name)
            release.wait(60)
        return real_meter()

    ls.service.meter = meter_that_hangs  # type: ignore[method-assign]
    try:
        ls.play("treo", ls.tone_source(6.0), zones=["zone-1", "zone-2"])
        assert ls.wait_until(lambda: ls.closed_relays() == ["amplifier", "zone-1", "zone-2"]), ls.relay_log
        assert hung_in == ["broadcast-scheduler"]

        assert ls.wait_until(lambda: ls.closed_relays() == []), ls.relay_log
        assert ls.service.bank is not None and ls.service.bank.stats.safety_cuts == 1
        assert not release.is_set() and ls.service.scheduler.thread is not None
        assert ls.service.scheduler.thread.is_alive()  # still hung: the cut did not need it
        assert "started" not in ls.states("treo") and ls.card.items == []
    finally:
        release.set()
    # Once it moves again, the cut item is reported and not played after all.
    assert ls.wait_state("treo", "failed"), ls.events()
    failed = ls.events("treo")[-1]
    assert failed["reason"] == "max_on_time" and "max_on_s" in failed["detail"]
    ls.play("tiep-theo", ls.tone_source(0.5))
    assert ls.wait_state("tiep-theo", "finished"), ls.events()
    assert ls.wait_idle()
    assert ls.states("treo") == ["scheduled", "failed"]
    assert len(ls.card.items) == 1


def test_quiet_hours_set_live_apply_to_what_waits(make_loudspeaker: MakeLoudspeaker, settable: type) -> None:
    from edge.commands.desired import is_live
    from edge.services import LIVE_KEYS

    clock = settable(at(23, 0))
    ls = make_loudspeaker(clock=clock)
    new = ls.service._config.model_copy(
        update={"broadcast": ls.service.settings.model_copy(update={"quiet_hours": quiet_spans()})}
    )
    assert is_live({"broadcast.quiet_hours"}, LIVE_KEYS)  # cfg/desired applies it without a restart

    ls.service.reconfigure(new)
    ls.play("dem-khuya", ls.tone_source(0.5), "normal")

    time.sleep(1.0)
    assert ls.states("dem-khuya") == ["scheduled"] and ls.card.items == []
