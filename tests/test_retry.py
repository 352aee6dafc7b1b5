"""The backoff every retrying loop uses (the broker link, a camera stream, a rating panel)."""

from __future__ import annotations

from edge.retry import Backoff


def test_each_delay_doubles_up_to_the_cap_and_is_drawn_from_its_upper_half() -> None:
    backoff = Backoff(0.5, 30.0)
    for ceiling in [0.5, 1, 2, 4, 8, 16, 30, 30, 30, 30]:
        delay = backoff.next()
        assert ceiling / 2 <= delay <= ceiling
    backoff.reset()  # after a success, the next failure waits the shortest again
    assert 0.25 <= backoff.next() <= 0.5


def test_a_long_outage_stays_at_the_cap() -> None:
    backoff = Backoff(0.1, 60.0)
    delays = [backoff.next() for _ in range(1000)]
    assert all(d <= 60.0 for d in delays) and min(delays[-900:]) >= 30.0


def test_devices_that_lost_the_same_broker_do_not_come_back_in_step() -> None:
    fleet = [Backoff(1.0, 60.0) for _ in range(50)]
    for backoff in fleet:
        for _ in range(4):
            backoff.next()
    fifth = sorted(b.next() for b in fleet)  # all wait between 8 and 16 s
    assert fifth[0] >= 8.0 and fifth[-1] <= 16.0
    assert fifth[-1] - fifth[0] > 4.0 and len({round(d, 2) for d in fifth}) > 40
