"""Two months of a commune's devices, made for the report, chain and browsing tests.

Each device is a real :class:`~edge.store.Outbox` (so every rating and proof of play is chained
by the store itself), fed the events its services write, stamped with the times a real October
and November 2026 would have given them. What the devices committed is then stored exactly as
``edge collect`` stores it: the batches are the devices' own wire JSON, parsed with the contract's
parser and written by the collector's storage (:mod:`edge.server.storage`, SQLite, and when asked the
same batches into PostgreSQL too, so both hold the same events under the same ids), and acknowledged
back into the outboxes.

The commune (gia-ray) has three counters: q1 (4-button panel), q2 (5-button), q3 (4-button, on
a device whose clock runs in UTC, so its ``ts`` carry ``+00:00``); six officers rotate between
counters and shifts week by week, one of them (nv-05) serving less well; about one press in
fourteen is flagged as misuse. Two loudspeaker clusters play a morning programme, a vaccination
notice, a greeting and a storm warning (with failures, an expiry and a preemption). The counter
cameras report absences and tamper incidents. A second commune (an-binh) has one counter whose
device has the same id as one in gia-ray.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any

from edge.messages import EventBatch, parse
from edge.server.db import VIETNAM
from edge.server.storage import Storage, open_storage
from edge.store import NewEvent, Outbox, StoredEvent, ranges_of

COMMUNE = "gia-ray"
OTHER_COMMUNE = "an-binh"
MONTH = "2026-11"
PREVIOUS = "2026-10"
OFFICERS = ("nv-01", "nv-02", "nv-03", "nv-04", "nv-05", "nv-06")
WEAK_OFFICER = "nv-05"

FOUR = [(4, "very_satisfied", "Rất hài lòng"), (3, "satisfied", "Hài lòng"), (2, "neutral", "Bình thường"),
        (1, "dissatisfied", "Không hài lòng")]  # fmt: skip
FIVE = [(5, "very_satisfied", "Rất hài lòng"), (4, "satisfied", "Hài lòng"), (3, "neutral", "Bình thường"),
        (2, "dissatisfied", "Không hài lòng"), (1, "very_dissatisfied", "Rất không hài lòng")]  # fmt: skip


class ReplayClock:
    """The outbox's ``timestamp``: hands out the queued times, one per event, in order."""

    def __init__(self, tz: timezone) -> None:
        self.tz = tz
        self.queue: deque[datetime] = deque()

    def __call__(self) -> str:
        return self.queue.popleft().astimezone(self.tz).isoformat(timespec="milliseconds")


@dataclass
class SimDevice:
    """One device: its commune, id, store and the events planned for it, by time."""

    commune: str
    device: str
    path: Path
    tz: timezone = VIETNAM
    planned: list[tuple[datetime, str, dict[str, Any]]] = field(default_factory=list)
    clock: ReplayClock = field(init=False)

    def __post_init__(self) -> None:
        self.clock = ReplayClock(self.tz)

    def plan(self, when: datetime, event_type: str, data: dict[str, Any]) -> None:
        self.planned.append((when, event_type, data))

    def open(self) -> Outbox:
        """The device's store, stamping events with the planned times."""
        return Outbox(self.path, timestamp=self.clock)

    def commit(self, outbox: Outbox, chunk: int = 50) -> None:
        """Append every planned event in time order (several per transaction, as a busy device does)."""
        self.planned.sort(key=lambda p: p[0])
        for i in range(0, len(self.planned), chunk):
            part = self.planned[i : i + chunk]
            self.clock.queue.extend(when for when, _, _ in part)
            outbox.append_many([NewEvent(t, d) for _, t, d in part])
        self.planned.clear()


def wire_batches(commune: str, device: str, epoch: str, events: Iterable[StoredEvent], size: int = 500) -> list[bytes]:
    """The messages a device publishes for ``events``: one type per batch, in seq order."""
    by_type: dict[str, list[StoredEvent]] = {}
    for e in sorted(events, key=lambda e: e.seq):
        by_type.setdefault(e.type, []).append(e)
    out = []
    for evs in by_type.values():
        for i in range(0, len(evs), size):
            body = ",".join(e.wire_json() for e in evs[i : i + size])
            out.append(
                f'{{"v":1,"device":"{device}","commune":"{commune}","epoch":"{epoch}","events":[{body}]}}'.encode()
            )
    return out


def store_batches(store: Storage, payloads: Iterable[bytes]) -> int:
    """Store messages as the collector does (its parser, its store); returns the new rows."""
    batches = [parse(EventBatch, p, 4 * 1024 * 1024) for p in payloads]
    return sum(new for _, new in store.store(batches)) if batches else 0


def deliver(outbox: Outbox, commune: str, device: str, store: Storage, *more: Storage) -> int:
    """Everything pending in ``outbox``, stored at the collector (and the same messages in ``more``
    stores), then acknowledged on the device; returns the new rows of the first store."""
    pending = outbox.pending(limit=1_000_000)
    payloads = wire_batches(commune, device, outbox.epoch, pending)
    new = store_batches(store, payloads)
    for other in more:
        store_batches(other, payloads)
    outbox.mark_acked(ranges_of(e.seq for e in pending))
    return new


def _weekdays(first: date, last: date) -> list[date]:
    days, day = [], first
    while day <= last:
        if day.weekday() < 5:
            days.append(day)
        day += timedelta(days=1)
    return days


def _at(day: date, hh: int, mm: int, tz: timezone = VIETNAM) -> datetime:
    return datetime.combine(day, time(hh, mm), tz)


def _rating(
    rng: random.Random, counter: str, officer: str | None, buttons: list[tuple[int, str, str]], panel: str, good: float
) -> dict[str, Any]:
    # ``good``: the chance of a satisfied vote; the rest spread over the other labels.
    satisfied = [b for b in buttons if b[1] in ("very_satisfied", "satisfied")]
    others = [b for b in buttons if b not in satisfied]
    score, label, text = rng.choice(satisfied) if rng.random() < good else rng.choice(others)
    flagged = rng.random() < 1 / 14
    return {
        "counter": counter,
        "officer": officer,
        "officer_from": "roster" if officer else None,
        "score": score,
        "label": label,
        "text": text,
        "button": [b[0] for b in buttons].index(score),
        "window": "officer",
        "window_id": f"{rng.getrandbits(32):08x}",
        "case": None,
        "misuse": rng.choice(["outside_window", "cooldown", "burst"]) if flagged else None,
        "panel": panel,
    }


def plan_counters(devices: dict[str, SimDevice], rng: random.Random, days: list[date]) -> None:
    counters = [("q1", "counter-01", FOUR, "gpio-4btn-rpi"), ("q2", "counter-02", FIVE, "gpio-5btn-rpi"),
                ("q3", "counter-03", FOUR, "serial-4btn")]  # fmt: skip
    shifts = [((7, 30), (11, 30)), ((13, 30), (17, 0))]
    for day in days:
        week = day.isocalendar().week
        for i, (counter, device, buttons, panel) in enumerate(counters):
            for s, ((h0, m0), (h1, m1)) in enumerate(shifts):
                # Officers change counter and shift every week.
                officer = OFFICERS[(i + 3 * s + week) % len(OFFICERS)]
                good = 0.55 if officer == WEAK_OFFICER else 0.88
                start, end = _at(day, h0, m0), _at(day, h1, m1)
                for _ in range(rng.randint(2, 7)):
                    when = start + (end - start) * rng.random()
                    devices[device].plan(when, "rating", _rating(rng, counter, officer, buttons, panel, good))
    # Night presses on the UTC device either side of November (local time 00:30 on 1 November,
    # 00:10 on 1 December): a month is Vietnam's calendar month whatever offset a device writes.
    for when in (
        datetime(2026, 10, 31, 17, 30, tzinfo=UTC),
        datetime(2026, 11, 30, 17, 10, tzinfo=UTC),
    ):
        data = _rating(rng, "q3", None, FOUR, "serial-4btn", 0.9)
        data["misuse"] = None
        devices["counter-03"].plan(when, "rating", data)
    other = devices[f"{OTHER_COMMUNE}/counter-01"]
    for day in days:
        for officer, (h0, h1) in (("ab-01", (8, 11)), ("ab-02", (14, 16))):
            for _ in range(rng.randint(1, 4)):
                when = _at(day, h0, 0) + timedelta(hours=h1 - h0) * rng.random()
                other.plan(when, "rating", _rating(rng, "q1", officer, FOUR, "gpio-4btn-rpi", 0.8))


def _broadcast(bid: str, state: str, priority: str, **extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "broadcast_id": bid,
        "state": state,
        "priority": priority,
        "zones": ["all"],
        "source": {"kind": "url", "sha256": "ab" * 32},
        "sha256": "ab" * 32,
        "started_at": None,
        "ended_at": None,
        "duration_s": None,
        "level_dbfs": None,
        "heard_dbfs": None,
        "reason": None,
    }
    data.update(extra)
    return data


def _play(
    dev: SimDevice, when: datetime, bid: str, priority: str, outcome: str, seconds: float, reason: str | None = None
) -> None:
    if outcome == "expired":
        dev.plan(when, "broadcast", _broadcast(bid, "expired", priority))
        return
    dev.plan(when, "broadcast", _broadcast(bid, "started", priority, started_at=when.isoformat()))
    end = when + timedelta(seconds=seconds)
    extra: dict[str, Any] = {"started_at": when.isoformat(), "ended_at": end.isoformat(), "duration_s": seconds}
    if outcome == "finished":
        extra["level_dbfs"] = -18.25
    if reason is not None:
        extra["reason"] = reason
    dev.plan(end, "broadcast", _broadcast(bid, outcome, priority, **extra))


def plan_loudspeakers(devices: dict[str, SimDevice], rng: random.Random, days: list[date]) -> None:
    for name in ("loa-01", "loa-02"):
        dev = devices[name]
        for day in days:
            outcome, reason = "finished", None
            if name == "loa-02" and day in (date(2026, 11, 9), date(2026, 11, 23)):
                outcome, reason = "failed", "source_unavailable"
            if name == "loa-01" and day == date(2026, 11, 16):
                outcome = "expired"
            _play(
                dev, _at(day, 6, 0), "chuong-trinh-sang", "normal", outcome, round(600 + rng.random() * 60, 3), reason
            )
        for day in (date(2026, 10, 20), date(2026, 11, 4), date(2026, 11, 11)):
            if day == date(2026, 11, 4):
                # Cut by the storm warning below.
                _play(dev, _at(day, 16, 0), "thong-bao-tiem-chung", "normal", "preempted", 42.5, "preempted")
                continue
            _play(dev, _at(day, 16, 0), "thong-bao-tiem-chung", "normal", "finished", 180.0)
        storm = _at(date(2026, 11, 4), 16, 0) + timedelta(seconds=43)
        if name == "loa-02":
            _play(dev, storm, "canh-bao-bao", "emergency", "failed", 0.0, "relay_fault")
        else:
            _play(dev, storm, "canh-bao-bao", "emergency", "finished", 95.0)
        _play(dev, _at(date(2026, 11, 20), 7, 0), "chao-mung-20-11", "priority", "finished", 240.0)


def plan_cameras(devices: dict[str, SimDevice], rng: random.Random, days: list[date]) -> None:
    for counter, device in (("q1", "counter-01"), ("q2", "counter-02")):
        dev, camera = devices[device], f"cam-{counter}"

        def change(
            when: datetime, state: str, dev: SimDevice = dev, camera: str = camera, counter: str = counter
        ) -> None:
            dev.plan(when, "presence", {"camera": camera, "counter": counter, "state": state, "since": when.isoformat(),
                                        "occupancy": 0.0 if state == "absent" else 0.8})  # fmt: skip

        for day in days:
            change(_at(day, 7, 25), "present")
            for h0 in rng.sample([8, 9, 10, 14, 15], k=rng.randint(0, 2)):
                away = _at(day, h0, rng.randint(0, 20))
                change(away, "absent")
                change(away + timedelta(minutes=rng.randint(5, 35)), "present")
            # Lunch is outside office hours; on the 26th it starts before the morning ends, and
            # counts up to 11:30.
            change(_at(day, 11, 15) if day == date(2026, 11, 26) else _at(day, 11, 40), "absent")
            change(_at(day, 13, 20), "present")
            change(_at(day, 17, 5), "absent")

    def tamper(device: str, counter: str, incident: str, kind: str, start: datetime, end: datetime | None) -> None:
        dev = devices[device]
        base = {"camera": f"cam-{counter}", "counter": counter, "kind": kind, "incident": incident}
        dev.plan(start, "tamper", {**base, "state": "start"})
        if end is not None:
            dev.plan(end, "tamper", {**base, "state": "end"})

    tamper("counter-02", "q2", "inc-1028", "covered", _at(date(2026, 10, 28), 9, 0), _at(date(2026, 10, 28), 9, 5))
    tamper("counter-02", "q2", "inc-1112", "covered", _at(date(2026, 11, 12), 9, 10), _at(date(2026, 11, 12), 9, 14))
    tamper("counter-01", "q1", "inc-1118", "moved", _at(date(2026, 11, 18), 14, 0), _at(date(2026, 11, 18), 14, 30))
    # Still going when the month ends: counted to the month's end.
    tamper("counter-01", "q1", "inc-1130", "lost", _at(date(2026, 11, 30), 16, 50), None)


@dataclass
class Commune:
    """What :func:`make_commune` made: the collector's SQLite database, the other databases holding
    the same events (PostgreSQL URLs), and each device's store."""

    db: Path
    devices: dict[str, SimDevice]
    also: list[str] = field(default_factory=list)


def make_commune(root: Path, seed: int = 20261130, also: Sequence[str] = ()) -> Commune:
    """Two months of the commune's devices, committed in their outboxes and stored at a collector
    (SQLite, and the same batches into each database of ``also``)."""
    rng = random.Random(seed)
    names = [
        (COMMUNE, "counter-01", VIETNAM),
        (COMMUNE, "counter-02", VIETNAM),
        (COMMUNE, "counter-03", UTC),
        (COMMUNE, "loa-01", VIETNAM),
        (COMMUNE, "loa-02", VIETNAM),
        (OTHER_COMMUNE, "counter-01", VIETNAM),
    ]
    devices: dict[str, SimDevice] = {}
    for commune, device, tz in names:
        key = device if commune == COMMUNE else f"{commune}/{device}"
        devices[key] = SimDevice(commune, device, root / "devices" / commune / device / "events.db", tz)
    days = _weekdays(date(2026, 10, 1), date(2026, 11, 30))
    plan_counters(devices, rng, days)
    plan_loudspeakers(devices, rng, days)
    plan_cameras(devices, rng, days)
    db = root / "collector.db"
    stores = [open_storage(target) for target in (db, *also)]
    try:
        for dev in devices.values():
            with dev.open() as outbox:
                dev.commit(outbox)
                deliver(outbox, dev.commune, dev.device, *stores)
    finally:
        for store in stores:
            store.close()
    return Commune(db, devices, list(also))
