"""Arbitration (DESIGN.md §8), table-driven over every ordered pair of priorities and each on_preempt.

Item A is on the air (or warming up) when item B arrives. A is a stepped tone (400, 600, 800, 1000 Hz,
0.6 s each) so that where it was cut, and where it started again, can be read from the captured
sound; B is a 1500 Hz tone. What is checked is what a listener under the horns would notice, and what
the proof of play says about it:

- B strictly higher than A: A is cut at once, B plays with no second warm-up, and A then resumes where
  it was cut, starts over, or is gone, as its on_preempt says;
- B equal or lower: B waits for A to finish (equal priorities queue in order of arrival);
- B arriving while A warms up: a higher B takes over the warm-up and plays first; A has not started,
  so nothing of it is preempted.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from edge.services.broadcast.plan import RANK
from sim.audio import write_tone

if TYPE_CHECKING:
    from tests.broadcast_fixtures import Loudspeaker

    MakeLoudspeaker = Callable[..., Loudspeaker]

pytest_plugins = ["tests.broadcast_fixtures"]

PRIORITIES = ["normal", "priority", "emergency"]
STEPS = [400.0, 600.0, 800.0, 1000.0]
STEP_S = 0.6
A_SECONDS = STEP_S * len(STEPS)
B_HZ = 1500.0
B_SECONDS = 0.7
#: When B is sent: A has played this much (inside its 600 Hz step, well clear of the step's edges).
CUT_AT_S = 0.9


def near(hz: float, target: float) -> bool:
    return abs(hz - target) < 60


def step_at(hz: float) -> int:
    """Which of A's steps a frequency belongs to."""
    found = [i for i, f in enumerate(STEPS) if near(hz, f)]
    assert found, f"{hz:.0f} Hz is none of A's steps"
    return found[0]


def sources(ls: Loudspeaker, tmp: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    from tests.broadcast_fixtures import stepped_tone  # loaded by pytest_plugins first, so its asserts are rewritten

    a = ls.serve(stepped_tone(tmp / "a.wav", STEPS, STEP_S))
    b = ls.serve(write_tone(tmp / "b.wav", hz=B_HZ, seconds=B_SECONDS, rms_dbfs=-12.0))
    return a, b


@pytest.mark.parametrize("on_preempt", ["resume", "restart", "drop"])
@pytest.mark.parametrize(("a_priority", "b_priority"), list(itertools.product(PRIORITIES, PRIORITIES)))
def test_an_item_arriving_while_another_plays(
    make_loudspeaker: MakeLoudspeaker, tmp_path: Path, a_priority: str, b_priority: str, on_preempt: str
) -> None:
    ls = make_loudspeaker(warm_up_s=0.2, idle_off_s=30.0)
    a, b = sources(ls, tmp_path)
    ls.play("A", a, a_priority, zones=["zone-1"], on_preempt=on_preempt)
    assert ls.wait_until(lambda: bool(ls.card.items) and ls.card.items[0].seconds >= CUT_AT_S), ls.events()

    ls.play("B", b, b_priority, zones=["zone-2"])

    assert ls.wait_state("B", "finished"), ls.events()
    assert ls.wait_idle(), ls.events()
    played = ls.played()
    a_states = ls.states("A")
    assert ls.states("B") == ["scheduled", "started", "finished"]
    amp = [closed for _, name, closed in ls.relay_log if name == "amplifier"]
    assert amp == [True], "the amplifier was switched more than once: a warm-up was repeated"

    if RANK[b_priority] <= RANK[a_priority]:
        # B waits: A plays whole, then B.
        assert a_states == ["scheduled", "started", "finished"]
        assert len(played) == 2, played
        (a_s, a_first, a_last), (b_s, b_first, _) = played
        assert a_s == pytest.approx(A_SECONDS, abs=0.2) and near(a_first, 400) and near(a_last, 1000)
        assert b_s == pytest.approx(B_SECONDS, abs=0.2) and near(b_first, B_HZ)
        return

    # B preempts A at once: the captured sound shows A cut inside its second step, then B.
    a1, b1 = played[0], played[1]
    assert step_at(a1[1]) == 0 and step_at(a1[2]) in (1, 2), played
    assert a1[0] < A_SECONDS - STEP_S, "A was not cut"
    assert near(b1[1], B_HZ) and b1[0] == pytest.approx(B_SECONDS, abs=0.2)
    preempted = next(e for e in ls.events("A") if e["state"] == "preempted")
    assert preempted["by"] == "B" and preempted["by_priority"] == b_priority and preempted["reason"] == "preempted"
    assert preempted["duration_s"] == pytest.approx(a1[0], abs=0.25)
    b_started = next(e for e in ls.events("B") if e["state"] == "started")
    assert b_started["started_at"] >= preempted["ended_at"]
    # The zones: A's opened before B's closed.
    zone_order = [(name, closed) for _, name, closed in ls.relay_log if name != "amplifier"]
    assert zone_order[:3] == [("zone-1", True), ("zone-1", False), ("zone-2", True)], zone_order

    if on_preempt == "drop":
        assert a_states == ["scheduled", "started", "preempted"]
        assert len(played) == 2, played
        return
    assert len(played) == 3, played
    a2 = played[2]
    assert step_at(a2[2]) == 3, "A did not play to its end"
    if on_preempt == "resume":
        assert a_states == ["scheduled", "started", "preempted", "resumed", "finished"]
        assert step_at(a2[1]) in (step_at(a1[2]), step_at(a1[2]) + 1), played  # where it was cut
        assert a1[0] + a2[0] == pytest.approx(A_SECONDS, abs=0.3)
        resumed = next(e for e in ls.events("A") if e["state"] == "resumed")
        assert resumed["position_s"] == pytest.approx(preempted["duration_s"], abs=0.15)
    else:
        assert a_states == ["scheduled", "started", "preempted", "started", "finished"]
        assert step_at(a2[1]) == 0 and a2[0] == pytest.approx(A_SECONDS, abs=0.2)  # from the beginning


@pytest.mark.parametrize(("a_priority", "b_priority"), list(itertools.product(PRIORITIES, PRIORITIES)))
def test_an_item_arriving_during_the_warm_up(
    make_loudspeaker: MakeLoudspeaker, tmp_path: Path, a_priority: str, b_priority: str
) -> None:
    ls = make_loudspeaker(warm_up_s=1.5, idle_off_s=30.0)
    a, b = sources(ls, tmp_path)
    ls.play("A", a, a_priority, zones=["zone-1"])
    assert ls.wait_until(lambda: any(name == "amplifier" and closed for _, name, closed in ls.relay_log))
    assert "started" not in ls.states("A"), "the warm-up is over already: the test cannot say anything"

    ls.play("B", b, b_priority, zones=["zone-2"])

    assert ls.wait_state("A", "finished") and ls.wait_state("B", "finished"), ls.events()
    assert ls.wait_idle()
    played = ls.played()
    assert len(played) == 2, played
    assert ls.states("A") == ["scheduled", "started", "finished"]  # never on the air when B came
    assert ls.states("B") == ["scheduled", "started", "finished"]
    amp = [closed for _, name, closed in ls.relay_log if name == "amplifier"]
    assert amp == [True], "one warm-up serves both"
    first, second = played
    if RANK[b_priority] > RANK[a_priority]:
        assert near(first[1], B_HZ) and near(second[1], 400), played  # B took over the warm-up
        assert first[0] == pytest.approx(B_SECONDS, abs=0.2)
    else:
        assert near(first[1], 400) and near(second[1], B_HZ), played
        assert first[0] == pytest.approx(A_SECONDS, abs=0.2)
