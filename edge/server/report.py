"""The monthly report: satisfaction per counter and per officer, loudspeaker plays, camera incidents.

Read from the collector's database, SQLite or PostgreSQL (the same figures from either); a month is
a calendar month in Vietnam's time (UTC+7), and every event is placed by its own ``ts``, which
carries its device's offset.

**Ratings.** A vote is a ``rating`` event whose ``misuse`` is null. Votes are counted per label
(``very_satisfied`` ... ``very_dissatisfied``; scores differ between 3-, 4- and 5-button panels,
labels do not). The share satisfied is the SIPAS measure: ``very_satisfied`` + ``satisfied`` over
the votes counted. Presses flagged as misuse (``outside_window``, ``cooldown``, ``burst``) are left
out of every share and counted on their own. The change against the previous month is in
percentage points. An officer is *below the threshold* with at least ``min_votes`` votes and a
share under ``threshold`` percent; with fewer votes the share is shown but not judged.

**Loudspeakers.** From ``broadcast`` events: per broadcast and per device, the plays that finished,
failed, were cut by a higher priority, expired or were cancelled, and the seconds played
(``duration_s`` of the finished plays).

**Cameras.** From ``tamper`` events, the incidents (distinct ``incident`` ids that started in the
month) and their length; from ``presence`` events, the officer's absences from the counter that
overlap office hours, and their total length within office hours.

**Chains.** The chain status of every device (:mod:`edge.server.chain`).

:func:`build` makes the report as plain data (what ``--json`` prints), :func:`write_csv` the CSV
files, and :mod:`edge.server.report_html` the HTML page.
"""

from __future__ import annotations

import csv
import logging
import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any

from edge.exceptions import EdgeError
from edge.server.chain import verify_db
from edge.server.db import VIETNAM, CollectorDb, Row, parse_time

log = logging.getLogger(__name__)

#: Labels in the order a person reads them, best first.
LABELS = ("very_satisfied", "satisfied", "neutral", "dissatisfied", "very_dissatisfied")
SATISFIED = frozenset({"very_satisfied", "satisfied"})
MISUSE_KINDS = ("outside_window", "cooldown", "burst")
#: ``broadcast`` states that end a play, in the order the report lists them.
PLAY_ENDS = ("finished", "failed", "preempted", "expired", "cancelled")
#: Monday to Friday, 07:30-11:30 and 13:30-17:00: the offices' working hours.
DEFAULT_OFFICE_HOURS = "07:30-11:30,13:30-17:00"
DEFAULT_THRESHOLD = 80.0
DEFAULT_MIN_VOTES = 10
_MONTH = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")


class ReportError(EdgeError, ValueError):
    """A report that cannot be made as asked (a bad month, bad office hours)."""


@dataclass(frozen=True)
class Month:
    """A calendar month in a time zone: ``start`` <= t < ``end``."""

    year: int
    month: int
    tz: timezone = VIETNAM

    @classmethod
    def parse(cls, text: str, tz: timezone = VIETNAM) -> Month:
        m = _MONTH.match(text)
        if m is None:
            raise ReportError(f"--month must be YYYY-MM, got {text!r}")
        return cls(int(m.group(1)), int(m.group(2)), tz)

    @property
    def start(self) -> datetime:
        return datetime(self.year, self.month, 1, tzinfo=self.tz)

    @property
    def end(self) -> datetime:
        return self.next().start

    def next(self) -> Month:
        return Month(self.year + self.month // 12, self.month % 12 + 1, self.tz)

    def previous(self) -> Month:
        return Month(self.year - (self.month == 1), (self.month - 2) % 12 + 1, self.tz)

    def __contains__(self, when: object) -> bool:
        return isinstance(when, datetime) and self.start <= when < self.end

    def __str__(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"


@dataclass(frozen=True)
class OfficeHours:
    """Working hours: time spans on the given weekdays (0 = Monday)."""

    spans: tuple[tuple[time, time], ...]
    weekdays: frozenset[int] = frozenset(range(5))

    @classmethod
    def parse(cls, text: str) -> OfficeHours:
        spans: list[tuple[time, time]] = []
        for part in text.split(","):
            try:
                a, b = part.strip().split("-")
                start, end = time.fromisoformat(a.strip()), time.fromisoformat(b.strip())
            except ValueError:
                raise ReportError(f"office hours must look like 07:30-11:30,13:30-17:00, got {text!r}") from None
            if end <= start:
                raise ReportError(f"office hours {part.strip()!r} end before they start")
            spans.append((start, end))
        return cls(tuple(spans))

    def overlap_s(self, start: datetime, end: datetime) -> float:
        """Seconds of ``start``..``end`` (aware, in the report's zone) within office hours."""
        total = 0.0
        day = start.date()
        while datetime.combine(day, time(0), start.tzinfo) < end:
            if day.weekday() in self.weekdays:
                for a, b in self.spans:
                    lo = max(start, datetime.combine(day, a, start.tzinfo))
                    hi = min(end, datetime.combine(day, b, start.tzinfo))
                    if hi > lo:
                        total += (hi - lo).total_seconds()
            day += timedelta(days=1)
        return total

    def __str__(self) -> str:
        return ",".join(f"{a:%H:%M}-{b:%H:%M}" for a, b in self.spans)


@dataclass
class Tally:
    """Votes of one counter, officer or the whole commune in one month."""

    by_label: Counter[str] = field(default_factory=Counter)
    flagged: Counter[str] = field(default_factory=Counter)
    #: Counted votes whose device clock was not synchronised (their hour may be off).
    unsynced: int = 0
    hours: Counter[int] = field(default_factory=Counter)

    def add(self, label: str, misuse: str | None, hour: int, synced: bool) -> None:
        if misuse is not None:
            self.flagged[misuse] += 1
            return
        self.by_label[label] += 1
        self.hours[hour] += 1
        if not synced:
            self.unsynced += 1

    @property
    def counted(self) -> int:
        return sum(self.by_label.values())

    @property
    def satisfied(self) -> int:
        return sum(n for label, n in self.by_label.items() if label in SATISFIED)

    @property
    def share(self) -> float | None:
        """Share satisfied in percent (one decimal), None without votes."""
        return round(100.0 * self.satisfied / self.counted, 1) if self.counted else None

    def busiest(self, top: int = 3) -> list[int]:
        """The hours of day with the most votes, most first (ties: earlier hour first)."""
        return [h for h, _ in sorted(self.hours.items(), key=lambda kv: (-kv[1], kv[0]))[:top]]

    def as_dict(self) -> dict[str, Any]:
        labels = {label: self.by_label.get(label, 0) for label in LABELS}
        other = {k: v for k, v in sorted(self.by_label.items()) if k not in LABELS}
        return {
            "counted": self.counted,
            "by_label": labels,
            "other_labels": other,
            "satisfied": self.satisfied,
            "share_satisfied": self.share,
            "flagged": sum(self.flagged.values()),
            "flagged_by_kind": {
                k: self.flagged.get(k, 0) for k in (*MISUSE_KINDS, *sorted(set(self.flagged) - set(MISUSE_KINDS)))
            },
            "unsynced_clock": self.unsynced,
            "busiest_hours": self.busiest(),
        }


def _change(now: float | None, before: float | None) -> float | None:
    return None if now is None or before is None else round(now - before, 1)


@dataclass
class _Ratings:
    total: Tally = field(default_factory=Tally)
    counters: dict[tuple[str, str], Tally] = field(default_factory=lambda: defaultdict(Tally))
    officers: dict[tuple[str, str | None], Tally] = field(default_factory=lambda: defaultdict(Tally))
    counter_devices: dict[tuple[str, str], set[str]] = field(default_factory=lambda: defaultdict(set))
    officer_counters: dict[tuple[str, str | None], set[str]] = field(default_factory=lambda: defaultdict(set))
    unreadable: int = 0


def _label(data: dict[str, Any]) -> str:
    label = data.get("label")
    if isinstance(label, str) and label:
        return label
    score = data.get("score")
    return f"score-{score}" if isinstance(score, int) else "unknown"


def _ratings(rows: Iterable[Row], month: Month) -> _Ratings:
    out = _Ratings()
    for r in rows:
        when = r.local_time(month.tz)
        if r.data is None or when is None:
            out.unreadable += 1
            continue
        if when not in month:
            continue
        counter = r.data.get("counter")
        counter = counter if isinstance(counter, str) and counter else r.device
        officer = r.data.get("officer")
        officer = officer if isinstance(officer, str) and officer else None
        misuse = r.data.get("misuse")
        misuse = str(misuse) if misuse is not None else None
        label = _label(r.data)
        for tally in (out.total, out.counters[(r.commune, counter)], out.officers[(r.commune, officer)]):
            tally.add(label, misuse, when.hour, r.clock_synced)
        out.counter_devices[(r.commune, counter)].add(r.device)
        out.officer_counters[(r.commune, officer)].add(counter)
    return out


def _broadcasts(rows: Iterable[Row], month: Month) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    per_item: dict[str, dict[str, Any]] = {}
    per_device: dict[tuple[str, str], dict[str, Any]] = {}

    def fresh() -> dict[str, Any]:
        return {**{s: 0 for s in PLAY_ENDS}, "played_s": 0.0, "failure_reasons": Counter()}

    for r in rows:
        when = r.local_time(month.tz)
        if r.data is None or when is None or when not in month:
            continue
        state = r.data.get("state")
        bid = r.data.get("broadcast_id")
        if state not in PLAY_ENDS or not isinstance(bid, str):
            continue
        item = per_item.setdefault(bid, {"broadcast_id": bid, "priority": None, "devices": set(), **fresh()})
        dev = per_device.setdefault((r.commune, r.device), {"commune": r.commune, "device": r.device, **fresh()})
        item["priority"] = r.data.get("priority") or item["priority"]
        item["devices"].add(r.device)
        for acc in (item, dev):
            acc[state] += 1
            if state == "finished" and isinstance(r.data.get("duration_s"), int | float):
                acc["played_s"] += float(r.data["duration_s"])
            if state == "failed":
                acc["failure_reasons"][str(r.data.get("reason") or "unknown")] += 1

    def done(acc: dict[str, Any]) -> dict[str, Any]:
        acc["played_s"] = round(acc["played_s"], 1)
        acc["failure_reasons"] = dict(sorted(acc["failure_reasons"].items()))
        if "devices" in acc:
            acc["devices"] = sorted(acc["devices"])
        return acc

    items = [done(per_item[k]) for k in sorted(per_item)]
    devices = [done(per_device[k]) for k in sorted(per_device)]
    return items, devices


def _cameras(
    tamper: Iterable[Row], presence: Iterable[Row], month: Month, office: OfficeHours, now: datetime
) -> list[dict[str, Any]]:
    until = min(month.end, now)
    out: dict[tuple[str, str], dict[str, Any]] = {}

    def entry(commune: str, counter: str) -> dict[str, Any]:
        return out.setdefault(
            (commune, counter),
            {
                "commune": commune,
                "counter": counter,
                "cameras": set(),
                "tamper_incidents": 0,
                "tamper_by_kind": Counter(),
                "tamper_s": 0.0,
                "absences": 0,
                "absent_office_s": 0.0,
            },
        )

    # Tamper: an incident is its start; its length runs to its end (or the month's end, or now).
    starts: dict[tuple[str, str, str], tuple[datetime, dict[str, Any], str]] = {}
    ends: dict[tuple[str, str, str], datetime] = {}
    for r in tamper:
        when = r.local_time(month.tz)
        if r.data is None or when is None:
            continue
        incident = r.data.get("incident")
        if not isinstance(incident, str):
            continue
        key = (r.commune, r.device, incident)
        if r.data.get("state") == "start" and key not in starts:
            counter = r.data.get("counter") or r.data.get("camera") or r.device
            starts[key] = (when, r.data, str(counter))
        elif r.data.get("state") == "end":
            ends[key] = when
    for key, (began, data, counter) in starts.items():
        if began not in month:
            continue
        e = entry(key[0], counter)
        e["cameras"].add(str(data.get("camera") or "?"))
        e["tamper_incidents"] += 1
        e["tamper_by_kind"][str(data.get("kind") or "unknown")] += 1
        stop = min(ends.get(key, until), until)
        e["tamper_s"] += max(0.0, (stop - began).total_seconds())

    # Presence: each camera's changes in order of their ``since``; an absence lasts to the next change.
    changes: dict[tuple[str, str, str], list[tuple[datetime, str, str]]] = defaultdict(list)
    for r in presence:
        if r.data is None:
            continue
        since = parse_time(r.data.get("since"), month.tz) or r.local_time(month.tz)
        state = r.data.get("state")
        if since is None or state not in ("present", "absent"):
            continue
        camera = str(r.data.get("camera") or "?")
        counter = str(r.data.get("counter") or camera)
        changes[(r.commune, r.device, camera)].append((since, str(state), counter))
    for (commune, _device, camera), seq in changes.items():
        seq.sort(key=lambda c: c[0])
        for i, (since, state, counter) in enumerate(seq):
            if state != "absent":
                continue
            stop = seq[i + 1][0] if i + 1 < len(seq) else until
            lo, hi = max(since, month.start), min(stop, until)
            if hi <= lo:
                continue
            seconds = office.overlap_s(lo, hi)
            if seconds <= 0:
                continue
            e = entry(commune, counter)
            e["cameras"].add(camera)
            e["absences"] += 1
            e["absent_office_s"] += seconds

    rows = []
    for where in sorted(out):
        e = out[where]
        e["cameras"] = sorted(e["cameras"])
        e["tamper_by_kind"] = dict(sorted(e["tamper_by_kind"].items()))
        e["tamper_s"] = round(e["tamper_s"], 1)
        e["absent_office_s"] = round(e["absent_office_s"], 1)
        rows.append(e)
    return rows


def build(
    db: CollectorDb,
    month: Month,
    *,
    commune: str | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    min_votes: int = DEFAULT_MIN_VOTES,
    office_hours: OfficeHours | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The report for ``month`` (of one ``commune``, or all) as plain data, from the collector's
    database ``db`` (SQLite or PostgreSQL, :func:`edge.server.db.open_db`)."""
    office = office_hours or OfficeHours.parse(DEFAULT_OFFICE_HOURS)
    now = (now or datetime.now(month.tz)).astimezone(month.tz)
    prev = month.previous()
    wide = (prev.start, month.end)
    rating_rows = list(db.events(["rating"], commune=commune, around=wide))
    this, before = _ratings(rating_rows, month), _ratings(rating_rows, prev)

    counters = []
    for key in sorted(this.counters):
        t, p = this.counters[key], before.counters.get(key)
        counters.append(
            {
                "commune": key[0],
                "counter": key[1],
                "devices": sorted(this.counter_devices[key]),
                **t.as_dict(),
                "hours": [t.hours[h] for h in range(24)],
                "previous": {"counted": p.counted, "share_satisfied": p.share} if p else None,
                "change_pp": _change(t.share, p.share if p else None),
            }
        )
    officers = []
    for who in sorted(this.officers, key=lambda k: (k[0], k[1] is None, k[1] or "")):
        t, p = this.officers[who], before.officers.get(who)
        judged = who[1] is not None and t.counted >= min_votes and t.share is not None
        officers.append(
            {
                "commune": who[0],
                "officer": who[1],
                "counters": sorted(this.officer_counters[who]),
                **t.as_dict(),
                "previous": {"counted": p.counted, "share_satisfied": p.share} if p else None,
                "change_pp": _change(t.share, p.share if p else None),
                "judged": judged,
                "below_threshold": bool(judged and t.share is not None and t.share < threshold),
            }
        )
    broadcasts, loudspeakers = _broadcasts(db.events(["broadcast"], commune=commune, around=wide), month)
    cameras = _cameras(
        db.events(["tamper"], commune=commune, around=wide),
        db.events(["presence"], commune=commune),
        month,
        office,
        now,
    )
    chains = [s.as_dict() for s in verify_db(db, commune=commune)]
    notes = []
    if this.unreadable:
        notes.append(f"{this.unreadable} rating(s) without readable data or time were left out")
    total_prev = before.total
    return {
        "v": 1,
        "month": str(month),
        "commune": commune,
        "utc_offset": _offset(month.tz),
        "period": {"from": month.start.isoformat(), "to": month.end.isoformat()},
        "generated_at": now.isoformat(timespec="seconds"),
        "settings": {"threshold": threshold, "min_votes": min_votes, "office_hours": str(office)},
        "totals": {
            **this.total.as_dict(),
            "hours": [this.total.hours[h] for h in range(24)],
            "previous": {"counted": total_prev.counted, "share_satisfied": total_prev.share},
            "change_pp": _change(this.total.share, total_prev.share),
        },
        "counters": counters,
        "officers": officers,
        "below_threshold": [o["officer"] for o in officers if o["below_threshold"]],
        "broadcasts": broadcasts,
        "loudspeakers": loudspeakers,
        "cameras": cameras,
        "chains": chains,
        "chains_whole": all(c["whole"] for c in chains),
        "notes": notes,
    }


def _offset(tz: timezone) -> str:
    delta = tz.utcoffset(None)
    minutes = int(delta.total_seconds() // 60) if delta is not None else 0
    sign = "+" if minutes >= 0 else "-"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


# -- CSV -------------------------------------------------------------------------------------------


def _tally_columns(row: dict[str, Any]) -> list[Any]:
    return [
        row["counted"],
        *(row["by_label"][label] for label in LABELS),
        sum(row["other_labels"].values()),
        row["satisfied"],
        row["share_satisfied"],
        row["flagged"],
        *(row["flagged_by_kind"].get(k, 0) for k in MISUSE_KINDS),
        row["unsynced_clock"],
        (row["previous"] or {}).get("counted"),
        (row["previous"] or {}).get("share_satisfied"),
        row["change_pp"],
        " ".join(str(h) for h in row["busiest_hours"]),
    ]


TALLY_HEADER = [
    "counted",
    *LABELS,
    "other_labels",
    "satisfied_total",  # not "satisfied", which is the column of that label
    "share_satisfied",
    "flagged",
    *(f"flagged_{k}" for k in MISUSE_KINDS),
    "unsynced_clock",
    "previous_counted",
    "previous_share_satisfied",
    "change_pp",
    "busiest_hours",
]


def csv_tables(report: dict[str, Any]) -> dict[str, tuple[list[str], list[list[Any]]]]:
    """The report's tables as ``name -> (header, rows)``, as :func:`write_csv` writes them."""
    tables: dict[str, tuple[list[str], list[list[Any]]]] = {}
    tables["counters"] = (
        ["commune", "counter", "devices", *TALLY_HEADER],
        [[c["commune"], c["counter"], " ".join(c["devices"]), *_tally_columns(c)] for c in report["counters"]],
    )
    tables["officers"] = (
        ["commune", "officer", "counters", *TALLY_HEADER, "judged", "below_threshold"],
        [
            [
                o["commune"],
                o["officer"] or "",
                " ".join(o["counters"]),
                *_tally_columns(o),
                int(o["judged"]),
                int(o["below_threshold"]),
            ]
            for o in report["officers"]
        ],
    )
    hours = [["all", "", h, report["totals"]["hours"][h]] for h in range(24)]
    for c in report["counters"]:
        hours += [[c["commune"], c["counter"], h, c["hours"][h]] for h in range(24)]
    tables["hours"] = (["commune", "counter", "hour", "counted"], hours)
    tables["broadcasts"] = (
        ["broadcast_id", "priority", "devices", *PLAY_ENDS, "played_s", "failure_reasons"],
        [
            [
                b["broadcast_id"],
                b["priority"] or "",
                " ".join(b["devices"]),
                *(b[s] for s in PLAY_ENDS),
                b["played_s"],
                " ".join(f"{k}={v}" for k, v in b["failure_reasons"].items()),
            ]
            for b in report["broadcasts"]
        ],
    )
    tables["loudspeakers"] = (
        ["commune", "device", *PLAY_ENDS, "played_s", "failure_reasons"],
        [
            [
                d["commune"],
                d["device"],
                *(d[s] for s in PLAY_ENDS),
                d["played_s"],
                " ".join(f"{k}={v}" for k, v in d["failure_reasons"].items()),
            ]
            for d in report["loudspeakers"]
        ],
    )
    tables["cameras"] = (
        [
            "commune",
            "counter",
            "cameras",
            "tamper_incidents",
            "tamper_by_kind",
            "tamper_s",
            "absences",
            "absent_office_s",
        ],
        [
            [
                c["commune"],
                c["counter"],
                " ".join(c["cameras"]),
                c["tamper_incidents"],
                " ".join(f"{k}={v}" for k, v in c["tamper_by_kind"].items()),
                c["tamper_s"],
                c["absences"],
                c["absent_office_s"],
            ]
            for c in report["cameras"]
        ],
    )
    tables["chains"] = (
        ["commune", "device", "epoch", "whole", "events", "length", "verified", "carried", "sealed", "breaks"],
        [
            [
                s["commune"],
                s["device"],
                s["epoch"],
                int(s["whole"]),
                s["events"],
                s["length"],
                s["verified"],
                s["carried"],
                s["sealed"],
                len(s["breaks"]),
            ]
            for s in report["chains"]
        ],
    )
    tables["chain_breaks"] = (
        ["commune", "device", "epoch", "kind", "n", "to_n", "seq", "id", "detail"],
        [
            [s["commune"], s["device"], s["epoch"], b["kind"], b["n"], b["to_n"], b["seq"], b["id"], b["detail"]]
            for s in report["chains"]
            for b in s["breaks"]
        ],
    )
    return tables


def write_csv(report: dict[str, Any], directory: Path) -> list[Path]:
    """Write one CSV file per table into ``directory`` (UTF-8 with a BOM, so spreadsheet programs
    read the Vietnamese names right); returns the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, (header, rows) in csv_tables(report).items():
        path = directory / f"{name}.csv"
        with path.open("w", encoding="utf-8-sig", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            writer.writerows([["" if v is None else v for v in row] for row in rows])
        written.append(path)
    return written


def month_arg(text: str | None, tz: timezone = VIETNAM, today: datetime | None = None) -> Month:
    """``--month``: YYYY-MM, or the previous month when not given (the one a monthly report is for)."""
    if text:
        return Month.parse(text, tz)
    now = (today or datetime.now(tz)).astimezone(tz)
    return Month(now.year, now.month, tz).previous()
