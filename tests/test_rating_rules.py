"""Rating windows, misuse and the roster, as rules: times are given, nothing sleeps."""

from __future__ import annotations

from datetime import datetime, time
from typing import Any

import pytest
from pydantic import ValidationError

from edge.config import OfficerShift, RatingConfig
from edge.services.rating_rules import RatingRules, Verdict, officer_on_shift


def rules(**settings: Any) -> RatingRules:
    return RatingRules(RatingConfig(**settings))


def press(r: RatingRules, at: float) -> Verdict:
    """A press at ``at`` that was committed: classify, then record, as the service does."""
    verdict = r.classify(at)
    r.record(at, verdict)
    return verdict


def test_officer_window_takes_the_first_press_and_closes() -> None:
    r = rules(mode="officer", window_s=30)
    window = r.open_window(100.0, opened_by="done", case="HS-0012")
    first = press(r, 105.0)
    assert first == Verdict("officer", None, window.id, "HS-0012")
    second = press(r, 110.0)  # the window closed at the first press
    assert second == Verdict(None, "outside_window")


def test_officer_window_times_out_and_a_late_press_is_flagged() -> None:
    r = rules(mode="officer", window_s=30)
    r.open_window(100.0, opened_by="command")
    assert r.window(129.9) is not None
    assert press(r, 130.0) == Verdict(None, "outside_window")


def test_a_press_with_no_window_ever_opened_is_kept_and_flagged() -> None:
    assert press(rules(mode="officer"), 5.0).misuse == "outside_window"


def test_burst_is_flagged_from_the_press_that_completes_it() -> None:
    r = rules(mode="always", cooldown_s=0, burst_presses=3, burst_window_s=2.0)
    verdicts = [press(r, t) for t in (10.0, 10.5, 11.0, 11.2, 20.0)]
    assert [v.misuse for v in verdicts] == [None, None, "burst", "burst", None]


def test_burst_outranks_the_window() -> None:
    r = rules(mode="officer", burst_presses=3, burst_window_s=2.0)
    press(r, 10.0)
    press(r, 10.3)
    r.open_window(10.4, opened_by="done")
    third = press(r, 10.6)
    assert third.window == "officer" and third.misuse == "burst"


def test_always_mode_counts_one_vote_per_cooldown() -> None:
    r = rules(mode="always", cooldown_s=10, burst_presses=50)
    verdicts = [press(r, t) for t in (0.0, 3.0, 9.9, 10.0, 12.0, 25.0)]
    assert [v.misuse for v in verdicts] == [None, "cooldown", "cooldown", None, "cooldown", None]
    assert all(v.window == "always" for v in verdicts)
    assert r.cooldown_left(30.0) == pytest.approx(5.0)


def test_a_commit_that_failed_changes_nothing() -> None:
    r = rules(mode="officer")
    r.open_window(0.0, opened_by="done")
    r.classify(1.0)  # classified, but the commit raised: record() was never called
    assert press(r, 2.0).window == "officer"


def test_a_mode_change_closes_the_window() -> None:
    r = rules(mode="officer")
    r.open_window(0.0, opened_by="done")
    r.reconfigure(RatingConfig(mode="always", cooldown_s=5))
    assert r.window(1.0) is None
    assert press(r, 1.0).window == "always"


def test_roster_names_the_officer_on_shift() -> None:
    roster = [
        OfficerShift(officer="nv-07", start=time(7, 30), end=time(11, 30)),
        OfficerShift(officer="nv-08", days=["mon", "tue", "wed", "thu", "fri"], start=time(13, 30), end=time(17, 0)),
        OfficerShift(officer="nv-09", days=["sat"], start=time(7, 30), end=time(11, 30)),
    ]
    monday = datetime(2026, 11, 23)
    assert officer_on_shift(roster, monday.replace(hour=8)) == "nv-07"
    assert officer_on_shift(roster, monday.replace(hour=11, minute=30)) is None  # end is exclusive
    assert officer_on_shift(roster, monday.replace(hour=14)) == "nv-08"
    assert officer_on_shift(roster, datetime(2026, 11, 28, 9)) == "nv-09"  # a Saturday
    assert officer_on_shift(roster, datetime(2026, 11, 29, 9)) is None  # Sunday: nobody


def test_overlapping_shifts_and_backwards_shifts_are_config_errors() -> None:
    with pytest.raises(ValidationError, match=r"\[1\] \(nv-08\) overlaps \[0\] \(nv-07\) on mon"):
        RatingConfig(
            roster=[
                {"officer": "nv-07", "start": "07:30", "end": "11:30"},
                {"officer": "nv-08", "days": ["mon"], "start": "11:00", "end": "12:00"},
            ]
        )
    with pytest.raises(ValidationError, match="must be after start"):
        OfficerShift(officer="nv-07", start=time(11), end=time(8))
