"""A loudspeaker plays what a broadcast.play asks, and only that: real relays on MockFactory pins, the
real audio path into a simulated card, files fetched from a real server on loopback. What a person
auditing the loudspeaker would check: what came out of the horns, in which order the relays clicked,
and what the proof of play says.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from edge.services.broadcast import HARDWARE_META
from edge.store import Outbox
from sim.audio import measure, write_tone

if TYPE_CHECKING:
    from tests.broadcast_fixtures import Loudspeaker

    MakeLoudspeaker = Callable[..., Loudspeaker]

pytest_plugins = ["tests.broadcast_fixtures"]


@pytest.mark.parametrize("suffix", [".wav", ".mp3", ".ogg"])
def test_a_file_plays_with_the_relay_sequence_and_one_finished_event(
    make_loudspeaker: MakeLoudspeaker, tmp_path: Path, suffix: str
) -> None:
    ls = make_loudspeaker(warm_up_s=0.5)
    source = ls.serve(write_tone(tmp_path / f"notice{suffix}", hz=1000, seconds=2.0, rms_dbfs=-12.0))

    ack = ls.play("thong-bao-1", source, zones=["zone-1", "zone-3"], volume_db=-6)

    assert ack["state"] == "scheduled" and ack["zones"] == ["zone-1", "zone-3"]
    assert ls.wait_state("thong-bao-1", "finished"), ls.events()
    assert ls.wait_idle()
    # What came out: one item, 2.0 s, at the file's level less the 6 dB asked for.
    (item,) = ls.card.items
    heard = measure(ls.card.samples(item), ls.card.rate)
    assert heard.sound_s == pytest.approx(2.0, abs=0.2)
    assert heard.sound_rms_dbfs == pytest.approx(-18.0, abs=1.0)
    # The relays: amplifier, warm-up, the item's zones, then zones off; zone-2 never closed.
    order = [(name, closed) for _, name, closed in ls.relay_log]
    assert order[:3] == [("amplifier", True), ("zone-1", True), ("zone-3", True)]
    assert order[3:5] == [("zone-1", False), ("zone-3", False)]
    amp_on = ls.relay_log[0][0]
    zone_on = ls.relay_log[1][0]
    assert zone_on - amp_on >= 0.4  # the 0.5 s warm-up (times are when the changes were reported)
    assert item.started_at >= zone_on  # no sound before the zones are connected
    assert "zone-2" not in {name for _, name, _ in ls.relay_log}
    # The proof of play.
    events = ls.events("thong-bao-1")
    assert [e["state"] for e in events] == ["scheduled", "started", "finished"]
    done = events[-1]
    assert done["sha256"] == source["sha256"] and done["source"]["kind"] == "file"
    assert done["zones"] == ["zone-1", "zone-3"] and done["priority"] == "normal"
    assert done["duration_s"] == pytest.approx(2.0, abs=0.2)
    assert done["level_dbfs"] == pytest.approx(-18.0, abs=1.0)
    assert done["started_at"] and done["ended_at"] and done["heard_dbfs"] is None
    # And after idle_off_s without another item, the amplifier goes off too.
    assert ls.wait_until(lambda: ls.relay_log[-1][1:] == ("amplifier", False)), ls.relay_log
    assert ls.closed_relays() == []


def test_the_amplifier_stays_warm_between_items(make_loudspeaker: MakeLoudspeaker) -> None:
    ls = make_loudspeaker(warm_up_s=1.0, idle_off_s=5.0)
    ls.play("a", ls.tone_source(0.6))
    assert ls.wait_state("a", "finished")
    ls.play("b", ls.tone_source(0.6, hz=500))
    assert ls.wait_state("b", "finished")
    amp = [closed for _, name, closed in ls.relay_log if name == "amplifier"]
    assert amp == [True]  # switched on once, still on: b needed no warm-up
    assert len(ls.card.items) == 2


def test_repeat_plays_each_time_with_the_gap(make_loudspeaker: MakeLoudspeaker) -> None:
    ls = make_loudspeaker()
    ls.play("nhac-lai", ls.tone_source(0.5), repeat=3, gap_s=0.7)
    assert ls.wait_state("nhac-lai", "finished", count=3)
    assert ls.wait_idle()
    items = ls.card.items
    assert len(items) == 3
    gaps = [b.started_at - a.ended_at for a, b in itertools.pairwise(items) if a.ended_at]
    assert all(g >= 0.6 for g in gaps), gaps
    plays = [e["play"] for e in ls.events("nhac-lai") if e["state"] == "finished"]
    assert plays == [1, 2, 3]


def test_cancel_stops_the_item_on_the_air_and_opens_its_zones(make_loudspeaker: MakeLoudspeaker) -> None:
    ls = make_loudspeaker()
    ls.play("dai", ls.tone_source(6.0))
    assert ls.wait_state("dai", "started")
    time.sleep(0.5)

    result = ls.command("broadcast.cancel", {"broadcast_id": "dai"})

    assert result == {"broadcast_id": "dai", "state": "cancelled", "was_on_air": True}
    assert ls.wait_state("dai", "cancelled")
    assert ls.wait_until(lambda: ls.closed_relays() in ([], ["amplifier"]))
    cancelled = ls.events("dai")[-1]
    assert cancelled["reason"] == "cancelled" and 0.3 < cancelled["duration_s"] < 3.0
    assert ls.card.items[-1].seconds < 3.0
    assert ls.states("dai") == ["scheduled", "started", "cancelled"]


def test_a_later_play_with_the_same_id_replaces_the_earlier(make_loudspeaker: MakeLoudspeaker) -> None:
    ls = make_loudspeaker()
    later = (ls.clock() + timedelta(hours=1)).isoformat()
    ls.play("hop-to-dan-pho", ls.tone_source(0.5), start_at=later)

    ack = ls.play("hop-to-dan-pho", ls.tone_source(0.5, hz=700))

    assert ack["replaced"] is True
    assert ls.wait_state("hop-to-dan-pho", "finished")
    states = ls.states("hop-to-dan-pho")
    assert states == ["scheduled", "cancelled", "scheduled", "started", "finished"]
    assert ls.events("hop-to-dan-pho")[1]["reason"] == "replaced"
    assert len(ls.card.items) == 1


# -- bad input: rejected, or failed with a reason; nothing played, no relay closed -----------------


def test_arguments_this_loudspeaker_cannot_take_are_invalid_args(make_loudspeaker: MakeLoudspeaker) -> None:
    ls = make_loudspeaker()
    good = ls.tone_source(0.5)
    cases: dict[str, tuple[dict[str, Any], str, str]] = {
        "unknown zone": ({"zones": ["zone-1", "cho-ben-thanh"]}, "args.zones", "cho-ben-thanh"),
        "volume above 0 dB": ({"volume_db": 3}, "args.volume_db", "less than or equal to 0"),
        "absurd volume": ({"volume_db": -200}, "args.volume_db", "greater than or equal to -60"),
        "volume not a number": ({"volume_db": float("nan")}, "args.volume_db", ""),
        "volume as a boolean": ({"volume_db": False}, "args.volume_db", "valid number"),
        "volume as a string": ({"volume_db": "-6"}, "args.volume_db", "valid number"),
        "host not allowed": (
            {"source": {"url": "https://evil.example/a.mp3", "sha256": "0" * 64, "bytes": 10}},
            "args.source",
            "host_not_allowed",
        ),
        "file over the cap": ({"source": {**good, "bytes": 10**12}}, "args.source", "too_large"),
        "text over the cap": ({"source": {"text": "Thông báo. " * 400}}, "args.source", "text_too_long"),
        "not_after already past": ({"not_after": "2020-01-01T00:00:00+07:00"}, "args.not_after", "already past"),
        "a time without an offset": ({"start_at": "2030-01-01T08:00:00"}, "args.start_at", "timezone"),
        "days without times": ({"days": ["mon"]}, "args", "need times"),
        "a bad programme time": ({"times": ["25:00"]}, "args.times", ""),
        "stream host not allowed": (
            {"source": {"stream": "https://radio.example/live", "fallback": {"text": "Mất tín hiệu"}}},
            "args.source",
            "host_not_allowed",
        ),
    }
    for name, (change, path, words) in cases.items():
        args = {"broadcast_id": "x", "priority": "normal", "zones": ["all"], "source": good, **change}
        rejection = ls.rejected("broadcast.play", args)
        assert rejection.reason == "invalid_args", name
        assert path in rejection.detail and words in rejection.detail, (name, rejection.detail)
    assert ls.events() == [] and ls.service.scheduler.items() == []
    assert ls.relay_log == [] and ls.card.items == []


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ("wrong_hash", "bad_hash"),
        ("more_bytes_than_announced", "too_large"),
        ("undecodable", "bad_audio"),
        ("unreachable", "unreachable"),
        ("missing", "http_error"),
    ],
)
def test_a_file_that_cannot_be_played_fails_with_its_reason_and_no_relay_closes(
    make_loudspeaker: MakeLoudspeaker, tmp_path: Path, change: str, reason: str
) -> None:
    ls = make_loudspeaker()
    source = ls.tone_source(1.0)
    if change == "wrong_hash":
        source["sha256"] = "ab" * 32
    elif change == "more_bytes_than_announced":
        source["bytes"] -= 100
    elif change == "undecodable":
        source = ls.serve(_garbage(tmp_path / "hong.mp3"))
    elif change == "unreachable":
        source["url"] = source["url"].replace(f":{ls.media.port}/", ":9/")  # the discard port: nobody there
    else:
        source["url"] += ".missing"

    ls.play("hong", source)

    assert ls.wait_state("hong", "failed"), ls.events()
    failed = ls.events("hong")[-1]
    assert failed["reason"] == reason, failed
    assert failed["started_at"] is None and failed["duration_s"] is None
    assert ls.states("hong") == ["scheduled", "failed"]
    assert ls.service.scheduler.items() == []
    assert ls.relay_log == [] and ls.card.items == []


def _garbage(path: Path) -> Path:
    path.write_bytes(b"ID3\x03\x00\x00\x00\x00\x00\x00" + bytes(range(256)) * 40)
    return path


def test_a_hardware_note_left_by_an_earlier_daemon_is_cleared_at_start(
    make_loudspeaker: MakeLoudspeaker, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    state.mkdir(parents=True, exist_ok=True)
    with Outbox(state / "events.db") as earlier:
        earlier.set_meta(HARDWARE_META, json.dumps({"relays": "relay board not answering on /dev/ttyUSB0"}))
    ls = make_loudspeaker(state_dir=state)
    assert json.loads(ls.outbox.get_meta(HARDWARE_META) or "{}") == {}  # the board of this start is fine
