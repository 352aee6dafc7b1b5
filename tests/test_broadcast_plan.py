"""When a broadcast's plays are due, the volume it plays at, and the [broadcast] configuration.

The arithmetic of the schedule is checked here on its own (occurrences of programmes, quiet hours
across midnight, the volume caps); the configuration through ``edge config validate`` as a technician
runs it.
"""

from __future__ import annotations

import tomllib
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from edge.config import render_toml, starter_config
from edge.config.broadcast import BroadcastConfig, QuietHours
from edge.services.broadcast.plan import PlayArgs, first_occurrence, gain_db, next_occurrence
from sim.harness import run_edge

ICT = timezone(timedelta(hours=7))  # Vietnam
MONDAY = date(2026, 11, 23)


def programme(**args: Any) -> PlayArgs:
    return PlayArgs.model_validate(
        {"broadcast_id": "ct", "priority": "normal", "zones": ["all"], "source": {"text": "Xin chào"}, **args}
    )


def at(day: date, hh: int, mm: int = 0) -> datetime:
    return datetime.combine(day, time(hh, mm), tzinfo=ICT)


@pytest.mark.parametrize(
    ("start", "end", "inside", "outside"),
    [
        ("21:30", "05:30", ["21:30", "23:59", "00:00", "05:29"], ["05:30", "12:00", "21:29"]),
        ("11:30", "13:30", ["11:30", "12:45"], ["11:29", "13:30", "00:00"]),
    ],
)
def test_quiet_hours_cover_their_span_even_across_midnight(
    start: str, end: str, inside: list[str], outside: list[str]
) -> None:
    span = QuietHours.model_validate({"start": start, "end": end})
    assert all(span.covers(time.fromisoformat(t)) for t in inside)
    assert not any(span.covers(time.fromisoformat(t)) for t in outside)


def test_a_programme_occurs_at_its_times_on_its_days_until_its_last_day() -> None:
    args = programme(times=["17:00", "06:00"], days=["mon", "wed"], until="2026-11-25")
    assert args.times == [time(6), time(17)]  # sorted

    found = []
    after = at(MONDAY, 0)
    while (when := next_occurrence(args, after)) is not None:
        found.append(when)
        after = when + timedelta(seconds=1)

    assert found == [at(MONDAY, 6), at(MONDAY, 17), at(MONDAY + timedelta(2), 6), at(MONDAY + timedelta(2), 17)]


def test_a_programme_starts_at_start_at_and_stops_at_not_after() -> None:
    args = programme(
        times=["06:00", "17:00"],
        start_at=at(MONDAY, 12).isoformat(),
        not_after=at(MONDAY + timedelta(1), 12).isoformat(),
    )
    assert next_occurrence(args, at(MONDAY, 0)) == at(MONDAY, 17)
    assert next_occurrence(args, at(MONDAY, 17, 1)) == at(MONDAY + timedelta(1), 6)
    assert next_occurrence(args, at(MONDAY + timedelta(1), 6, 1)) is None
    due, deadline, occurrence = first_occurrence(args, at(MONDAY, 9), grace_s=1800)
    assert occurrence == at(MONDAY, 17)
    assert due == at(MONDAY, 17).timestamp() and deadline == due + 1800


def test_a_one_shot_item_is_due_at_start_at_and_expires_at_not_after() -> None:
    now = at(MONDAY, 8)
    assert first_occurrence(programme(), now, 1800) == (now.timestamp(), None, None)
    args = programme(start_at=at(MONDAY, 9).isoformat(), not_after=at(MONDAY, 10).isoformat())
    assert first_occurrence(args, now, 1800) == (at(MONDAY, 9).timestamp(), at(MONDAY, 10).timestamp(), None)


def test_the_volume_is_what_was_asked_capped_globally_and_by_the_tightest_zone() -> None:
    caps = {"cho": -10.0, "truong-hoc": -6.0}
    assert gain_db(0.0, ["zone-1"], 0.0, caps) == 0.0
    assert gain_db(-3.0, ["zone-1"], -6.0, caps) == -6.0
    assert gain_db(0.0, ["truong-hoc", "cho"], -3.0, caps) == -10.0
    assert gain_db(-20.0, ["cho"], 0.0, caps) == -20.0


def test_broadcast_config_refuses_loud_caps_and_empty_quiet_spans() -> None:
    with pytest.raises(ValueError, match="less than or equal to 0"):
        BroadcastConfig.model_validate({"max_volume_db": 3})
    with pytest.raises(ValueError, match="between -60 and 0 dB"):
        BroadcastConfig.model_validate({"zone_max_volume_db": {"cho": 2}})
    with pytest.raises(ValueError, match="would be empty"):
        BroadcastConfig.model_validate({"quiet_hours": [{"start": "22:00", "end": "22:00"}]})


def test_edge_config_validate_names_the_loudspeakers_problems(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(starter_config("loudspeaker", "loa-01", "gia-ray", "mqtt://127.0.0.1:1883", str(tmp_path)))
    assert run_edge(["config", "validate", "--config", str(good)], check=False).returncode == 0

    no_relays = tmp_path / "no-relays.toml"
    text = good.read_text(encoding="utf-8")
    data = tomllib.loads(text)
    del data["relays"]
    no_relays.write_text(render_toml(data), encoding="utf-8")
    result = run_edge(["config", "validate", "--config", str(no_relays)], check=False)
    assert result.returncode != 0
    assert "relays: the loudspeaker role needs a [relays] section" in result.stdout + result.stderr

    typo = tmp_path / "typo.toml"
    typo.write_text(text.replace("zone_max_volume_db = {  }", 'zone_max_volume_db = { "zone-9" = -6 }'))
    result = run_edge(["config", "validate", "--config", str(typo)], check=False)
    assert result.returncode != 0
    assert "broadcast.zone_max_volume_db.zone-9: the relay board has no zone 'zone-9'" in result.stdout + result.stderr
