"""``edge report`` on two generated months of a commune: its numbers against plain SQL written here,
its CSV, JSON and HTML against each other, and the page as headless Chromium renders and prints it.

The same batches are stored in SQLite and in PostgreSQL, and the report read from either must be
the same, figure for figure. The independent counts use SQLite's own time functions:
``strftime('%Y-%m', ts, '+7 hours')`` reads the offset every ``ts`` carries and gives the month in
Vietnam's time.
"""

from __future__ import annotations

import csv
import json
import re
import sqlite3
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from edge.server.db import VIETNAM, CollectorDbError, open_db
from edge.server.report_html import COLOURS
from sim.broker import free_port
from sim.harness import run_edge
from sim.postgres import fresh_database
from tests.browser import chromium_run
from tests.pg_fixtures import postgres_server, postgres_url  # noqa: F401 (fixtures)
from tests.report_fixtures import COMMUNE, MONTH, OTHER_COMMUNE, PREVIOUS, WEAK_OFFICER, Commune, make_commune

LABELS = ("very_satisfied", "satisfied", "neutral", "dissatisfied", "very_dissatisfied")
IN_MONTH = "strftime('%Y-%m', ts, '+7 hours') = ?"
#: Where ``edge report`` reads from; the plain SQL always reads the SQLite copy.
BACKENDS = ("sqlite", "postgresql")


@pytest.fixture(scope="module")
def commune(tmp_path_factory: pytest.TempPathFactory, postgres_server: str) -> Iterator[Commune]:  # noqa: F811
    """The two months, stored in SQLite and (the same batches, so the same ids) in PostgreSQL."""
    with fresh_database(postgres_server) as url:
        yield make_commune(tmp_path_factory.mktemp("commune"), also=[url])


def source(commune: Commune, backend: str) -> str:
    """``--db`` for ``backend``: the SQLite file or the PostgreSQL URL."""
    return str(commune.db) if backend == "sqlite" else commune.also[0]


def sql(db: Path, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return [tuple(r) for r in conn.execute(query, params)]
    finally:
        conn.close()


def report_json(db: Path | str, *args: str) -> dict[str, Any]:
    result = run_edge(["report", "--db", str(db), "--month", MONTH, "--json", *args])
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def expected_votes(
    db: Path, field: str, month: str, commune: str | None = COMMUNE
) -> dict[tuple[str, Any], dict[str, Any]]:
    """Votes per (commune, counter or officer), counted in SQL."""
    where = f"type = 'rating' AND {IN_MONTH}" + (" AND commune = ?" if commune else "")
    params: tuple[Any, ...] = (month, commune) if commune else (month,)
    out: dict[tuple[str, Any], dict[str, Any]] = defaultdict(
        lambda: {"labels": Counter(), "flagged": Counter(), "hours": Counter(), "unsynced": 0}
    )
    for c, key, label, misuse, hour, unsynced, n in sql(
        db,
        f"SELECT commune, json_extract(data, '$.{field}'), json_extract(data, '$.label'), "
        "json_extract(data, '$.misuse'), CAST(strftime('%H', ts, '+7 hours') AS INTEGER), "
        "sum(clock_synced = 0), count(*) FROM events "
        f"WHERE {where} GROUP BY 1, 2, 3, 4, 5",
        params,
    ):
        e = out[(c, key)]
        if misuse is None:
            e["labels"][label] += n
            e["hours"][hour] += n
            e["unsynced"] += unsynced
        else:
            e["flagged"][misuse] += n
    for e in out.values():
        counted = sum(e["labels"].values())
        satisfied = e["labels"]["very_satisfied"] + e["labels"]["satisfied"]
        e["counted"] = counted
        e["share"] = round(100 * satisfied / counted, 1) if counted else None
        e["busiest"] = [h for h, _ in sorted(e["hours"].items(), key=lambda kv: (-kv[1], kv[0]))[:3]]
    return out


def check_tally(got: dict[str, Any], want: dict[str, Any], before: dict[str, Any] | None) -> None:
    assert got["counted"] == want["counted"]
    assert got["by_label"] == {label: want["labels"][label] for label in LABELS}
    assert got["flagged"] == sum(want["flagged"].values())
    assert {k: v for k, v in got["flagged_by_kind"].items() if v} == dict(want["flagged"])
    assert got["share_satisfied"] == want["share"]
    assert got["unsynced_clock"] == want["unsynced"]
    assert got["busiest_hours"] == want["busiest"]
    if before is None:
        assert got["previous"] is None or got["previous"]["counted"] == 0
    else:
        assert got["previous"] == {"counted": before["counted"], "share_satisfied": before["share"]}
        assert got["change_pp"] == round(want["share"] - before["share"], 1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_counters_and_officers_match_plain_sql(commune: Commune, backend: str) -> None:
    report = report_json(source(commune, backend), "--commune", COMMUNE)
    counters = expected_votes(commune.db, "counter", MONTH)
    counters_before = expected_votes(commune.db, "counter", PREVIOUS)
    assert (
        {(c["commune"], c["counter"]) for c in report["counters"]}
        == set(counters)
        == {
            (COMMUNE, "q1"),
            (COMMUNE, "q2"),
            (COMMUNE, "q3"),
        }
    )
    for c in report["counters"]:
        key = (c["commune"], c["counter"])
        check_tally(c, counters[key], counters_before.get(key))
        assert sum(c["hours"]) == c["counted"]

    officers = expected_votes(commune.db, "officer", MONTH)
    officers_before = expected_votes(commune.db, "officer", PREVIOUS)
    assert {(o["commune"], o["officer"]) for o in report["officers"]} == set(officers)
    for o in report["officers"]:
        key = (o["commune"], o["officer"])
        check_tally(o, officers[key], officers_before.get(key))
    # Officers change counter and shift through the month: each served at every counter.
    for o in report["officers"]:
        if o["officer"] is not None:
            assert o["counters"] == ["q1", "q2", "q3"]
    below = sorted(k[1] for k, e in officers.items() if k[1] and e["counted"] >= 10 and e["share"] < 80.0)
    assert report["below_threshold"] == below and WEAK_OFFICER in below
    # A higher threshold names more officers; with too few votes nobody is judged.
    stricter = report_json(source(commune, backend), "--commune", COMMUNE, "--threshold", "87.5")
    assert stricter["below_threshold"] == sorted(
        k[1] for k, e in officers.items() if k[1] and e["counted"] >= 10 and e["share"] < 87.5
    )
    assert report_json(source(commune, backend), "--commune", COMMUNE, "--min-votes", "1000")["below_threshold"] == []

    totals = report["totals"]
    all_votes = sql(
        commune.db,
        f"SELECT count(*), sum(json_extract(data, '$.label') IN ('very_satisfied', 'satisfied')) FROM events "
        f"WHERE type = 'rating' AND commune = ? AND json_extract(data, '$.misuse') IS NULL AND {IN_MONTH}",
        (COMMUNE, MONTH),
    )[0]
    assert (totals["counted"], totals["satisfied"]) == all_votes
    assert (
        totals["flagged"]
        == sql(
            commune.db,
            "SELECT count(*) FROM events WHERE type = 'rating' AND commune = ? "
            f"AND json_extract(data, '$.misuse') IS NOT NULL AND {IN_MONTH}",
            (COMMUNE, MONTH),
        )[0][0]
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_month_is_vietnams_calendar_month_whatever_offset_a_device_writes(commune: Commune, backend: str) -> None:
    report = report_json(source(commune, backend))  # every commune
    keys = {(c["commune"], c["counter"]) for c in report["counters"]}
    assert {(COMMUNE, "q1"), (OTHER_COMMUNE, "q1")} <= keys  # one counter id in two communes: two counters
    every = expected_votes(commune.db, "counter", MONTH, commune=None)
    for c in report["counters"]:
        assert c["counted"] == every[(c["commune"], c["counter"])]["counted"]
    # The UTC device's presses at 17:30Z on 31 October and 17:10Z on 30 November are local
    # 00:30 on 1 November (counted) and 00:10 on 1 December (not): a count by the text of ts is wrong.
    q3 = next(c for c in report["counters"] if c["counter"] == "q3")
    naive = sql(
        commune.db,
        "SELECT count(*) FROM events WHERE type = 'rating' AND device = 'counter-03' AND ts LIKE '2026-11-%' "
        "AND json_extract(data, '$.misuse') IS NULL",
    )[0][0]
    assert sql(commune.db, "SELECT count(*) FROM events WHERE ts LIKE '2026-10-31T17:30%'")[0][0] == 1
    assert q3["counted"] == naive  # one in, one out
    assert sql(commune.db, "SELECT count(*) FROM events WHERE device = 'counter-03' AND ts LIKE '%+00:00'")[0][0] > 100
    # The other commune alone.
    other = report_json(source(commune, backend), "--commune", OTHER_COMMUNE)
    assert [(c["commune"], c["counter"]) for c in other["counters"]] == [(OTHER_COMMUNE, "q1")]
    assert {o["officer"] for o in other["officers"]} == {"ab-01", "ab-02"}
    assert other["loudspeakers"] == [] and other["cameras"] == []


def _office_overlap_s(lo: datetime, hi: datetime) -> float:
    total = 0.0
    day = lo.date()
    while day <= hi.date():
        if day.weekday() < 5:
            for a, b in (((7, 30), (11, 30)), ((13, 30), (17, 0))):
                start = datetime(day.year, day.month, day.day, *a, tzinfo=VIETNAM)
                end = datetime(day.year, day.month, day.day, *b, tzinfo=VIETNAM)
                total += max(0.0, (min(end, hi) - max(start, lo)).total_seconds())
        day += timedelta(days=1)
    return total


@pytest.mark.parametrize("backend", BACKENDS)
def test_loudspeakers_and_cameras_match_plain_sql(commune: Commune, backend: str) -> None:
    report = report_json(source(commune, backend), "--commune", COMMUNE)
    ends = ("finished", "failed", "preempted", "expired", "cancelled")
    per_device: dict[str, Counter[str]] = defaultdict(Counter)
    played: dict[str, float] = defaultdict(float)
    for device, state, n, seconds in sql(
        commune.db,
        "SELECT device, json_extract(data, '$.state'), count(*), sum(json_extract(data, '$.duration_s')) "
        f"FROM events WHERE type = 'broadcast' AND {IN_MONTH} GROUP BY 1, 2",
        (MONTH,),
    ):
        per_device[device][state] = n
        if state == "finished":
            played[device] = seconds
    assert [d["device"] for d in report["loudspeakers"]] == ["loa-01", "loa-02"]
    for d in report["loudspeakers"]:
        assert {s: d[s] for s in ends} == {s: per_device[d["device"]][s] for s in ends}
        assert d["played_s"] == round(played[d["device"]], 1)
    reasons = dict(
        sql(
            commune.db,
            "SELECT json_extract(data, '$.reason'), count(*) FROM events "
            "WHERE type = 'broadcast' AND device = 'loa-02' "
            f"AND json_extract(data, '$.state') = 'failed' AND {IN_MONTH} GROUP BY 1",
            (MONTH,),
        )
    )
    assert next(d for d in report["loudspeakers"] if d["device"] == "loa-02")["failure_reasons"] == reasons
    per_item = {
        (bid, state): n
        for bid, state, n in sql(
            commune.db,
            "SELECT json_extract(data, '$.broadcast_id'), json_extract(data, '$.state'), count(*) FROM events "
            f"WHERE type = 'broadcast' AND {IN_MONTH} GROUP BY 1, 2",
            (MONTH,),
        )
    }
    assert {b["broadcast_id"] for b in report["broadcasts"]} == {bid for bid, _ in per_item}
    for b in report["broadcasts"]:
        assert {s: b[s] for s in ends} == {s: per_item.get((b["broadcast_id"], s), 0) for s in ends}

    # Tamper incidents: distinct incidents that started in the month, lasting to their end or the month's end.
    month_end = "2026-12-01T00:00:00+07:00"
    tamper = dict(
        (counter, (n, seconds))
        for counter, n, seconds in sql(
            commune.db,
            """SELECT s.counter, count(*), sum((min(coalesce(julianday(e.ts), julianday(:end)), julianday(:end))
                                               - julianday(s.ts)) * 86400)
               FROM (SELECT device, json_extract(data, '$.counter') AS counter,
                            json_extract(data, '$.incident') AS inc, ts
                     FROM events WHERE type = 'tamper' AND json_extract(data, '$.state') = 'start'
                     AND strftime('%Y-%m', ts, '+7 hours') = :month) s
               LEFT JOIN (SELECT device, json_extract(data, '$.incident') AS inc, ts FROM events
                          WHERE type = 'tamper' AND json_extract(data, '$.state') = 'end') e
                 ON e.device = s.device AND e.inc = s.inc
               GROUP BY s.counter""",
            {"end": month_end, "month": MONTH},  # type: ignore[arg-type]
        )
    )
    # Absences: each camera's changes in order; an absence lasts to the next change.
    absences: dict[str, list[float]] = defaultdict(list)
    start, end = datetime(2026, 11, 1, tzinfo=VIETNAM), datetime(2026, 12, 1, tzinfo=VIETNAM)
    for counter, state, since, nxt in sql(
        commune.db,
        """SELECT json_extract(data, '$.counter'), json_extract(data, '$.state'), json_extract(data, '$.since'),
                  lead(json_extract(data, '$.since')) OVER (
                      PARTITION BY device, json_extract(data, '$.camera')
                      ORDER BY julianday(json_extract(data, '$.since')))
           FROM events WHERE type = 'presence' AND commune = ?""",
        (COMMUNE,),
    ):
        if state != "absent":
            continue
        lo = max(datetime.fromisoformat(since), start)
        hi = min(datetime.fromisoformat(nxt) if nxt else end, end)
        if hi > lo and (seconds := _office_overlap_s(lo, hi)) > 0:
            absences[counter].append(seconds)
    cameras = {c["counter"]: c for c in report["cameras"]}
    assert set(cameras) == set(tamper) | set(absences)
    for counter, c in cameras.items():
        n, seconds = tamper.get(counter, (0, 0.0))
        assert (c["tamper_incidents"], c["tamper_s"]) == (n, round(seconds, 1))
        assert (c["absences"], c["absent_office_s"]) == (len(absences[counter]), round(sum(absences[counter]), 1))
    # The lunch that began at 11:15 on the 26th counts 15 minutes; other lunches count nothing.
    assert 15 * 60 in [round(s) for s in absences["q1"]]

    # Every device's chain, untouched, verifies whole.
    assert report["chains_whole"]
    chained = dict(
        sql(
            commune.db,
            "SELECT device, count(*) FROM events WHERE commune = ? AND type IN ('rating', 'broadcast') GROUP BY 1",
            (COMMUNE,),
        )
    )
    assert {c["device"]: c["events"] for c in report["chains"]} == chained
    assert all(c["verified"] == c["length"] == c["events"] for c in report["chains"])


# -- the three outputs agree ------------------------------------------------------------------------------


class Tables(HTMLParser):
    """Every ``<table id>`` of a page: row ``data-key`` -> cell ``data-col`` -> (data-value, text)."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, dict[str, dict[str, tuple[str, str]]]] = {}
        self._table: str | None = None
        self._row: str | None = None
        self._cell: tuple[str, str] | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "table" and "id" in a:
            self._table = a["id"]
            self.tables[self._table] = {}
        elif tag == "tr" and self._table and "data-key" in a:
            self._row = a["data-key"]
            self.tables[self._table].setdefault(self._row, {})
        elif tag == "td" and self._row is not None and "data-col" in a:
            self._cell, self._text = (a["data-col"], a["data-value"]), []
        elif tag == "br" and self._cell is not None:
            self._text.append("\n")

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None and self._table and self._row is not None:
            col, value = self._cell
            self.tables[self._table][self._row][col] = (value, "".join(self._text))
            self._cell = None
        elif tag == "tr":
            self._row = None
        elif tag == "table":
            self._table = None


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8-sig", newline="") as fh:
        return list(csv.DictReader(fh))


def as_text(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(int(v))
    if isinstance(v, list):
        return " ".join(str(x) for x in v)
    if isinstance(v, dict):
        return " ".join(f"{k}={n}" for k, n in v.items())
    return str(v)


def from_json(row: dict[str, Any], col: str) -> Any:
    """A CSV column's value taken from the JSON, by the column's meaning."""
    if col in LABELS:
        return row["by_label"][col]
    if col.startswith("flagged_"):
        return row["flagged_by_kind"][col[len("flagged_") :]]
    if col.startswith("previous_"):
        return (row["previous"] or {}).get(col[len("previous_") :])
    if col == "other_labels":
        return sum(row["other_labels"].values())
    if col == "satisfied_total":
        return row["satisfied"]
    if col == "breaks":
        return len(row["breaks"])
    return row[col]


@pytest.fixture(scope="module")
def outputs(commune: Commune, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path, Path]:
    out = tmp_path_factory.mktemp("outputs")
    html, csv_dir = out / "bao-cao-2026-11.html", out / "csv"
    args = ["report", "--db", str(commune.db), "--month", MONTH, "--commune", COMMUNE]
    report = json.loads(run_edge([*args, "--html", str(html), "--csv", str(csv_dir), "--json"]).stdout)
    return report, html, csv_dir


def test_csv_json_and_html_say_the_same(outputs: tuple[dict[str, Any], Path, Path]) -> None:
    report, html, csv_dir = outputs
    parser = Tables()
    parser.feed(html.read_text(encoding="utf-8"))
    page = parser.tables
    layouts = [
        ("counters", "counters-table", report["counters"], lambda r: f"{r['commune']}/{r['counter']}"),
        ("officers", "officers-table", report["officers"], lambda r: f"{r['commune']}/{r['officer'] or ''}"),
        ("loudspeakers", "loudspeakers-table", report["loudspeakers"], lambda r: f"{r['commune']}/{r['device']}"),
        ("broadcasts", "broadcasts-table", report["broadcasts"], lambda r: r["broadcast_id"]),
        ("cameras", "cameras-table", report["cameras"], lambda r: f"{r['commune']}/{r['counter']}"),
        ("chains", "chains-table", report["chains"], lambda r: f"{r['commune']}/{r['device']}/{r['epoch']}"),
    ]
    for name, table, rows, key in layouts:
        by_csv = {}
        for r in read_csv(csv_dir / f"{name}.csv"):
            k = {
                "counters": lambda r: f"{r['commune']}/{r['counter']}",
                "officers": lambda r: f"{r['commune']}/{r['officer']}",
                "loudspeakers": lambda r: f"{r['commune']}/{r['device']}",
                "broadcasts": lambda r: r["broadcast_id"],
                "cameras": lambda r: f"{r['commune']}/{r['counter']}",
                "chains": lambda r: f"{r['commune']}/{r['device']}/{r['epoch']}",
            }[name](r)
            by_csv[k] = r
        by_json = {key(r): r for r in rows}
        shown = {k: v for k, v in page[table].items() if k != "total"}
        assert set(shown) == set(by_csv) == set(by_json), name
        assert by_json, f"{name}: nothing to compare"
        for k, cells in shown.items():
            assert cells, f"{name} {k}: no figures on the page"
            for col, (value, _text) in cells.items():
                assert value == by_csv[k][col] == as_text(from_json(by_json[k], col)), (name, k, col)
        # Every CSV column the JSON has is the JSON's value.
        for k, r in by_csv.items():
            for col, value in r.items():
                if col not in ("commune", "counter", "officer", "device", "broadcast_id", "epoch"):
                    assert value == as_text(from_json(by_json[k], col)), (name, k, col)
    # What a person reads is the figure, written the Vietnamese way.
    for cells in page["counters-table"].values():
        value, text = cells["share_satisfied"]
        assert text == (value.replace(".", ",") + "%" if value else "–")
        value, text = cells["counted"]
        assert text == f"{int(value):,}".replace(",", ".")
    totals = page["counters-table"]["total"]
    assert totals["counted"][0] == str(report["totals"]["counted"])
    hours = {int(r["hour"]): int(r["counted"]) for r in read_csv(csv_dir / "hours.csv") if r["commune"] == "all"}
    assert [hours[h] for h in range(24)] == report["totals"]["hours"]


_MEASURE = """<script>
(() => {
  const charts = [...document.querySelectorAll('svg[data-chart]')].map(s => {
    const b = s.getBoundingClientRect();
    return {chart: s.dataset.chart, x: b.left + scrollX, y: b.top + scrollY, w: b.width, h: b.height};
  });
  document.body.setAttribute('data-charts', JSON.stringify(charts));
  document.body.setAttribute('data-height', String(document.documentElement.scrollHeight));
})();
</script>"""


def _near(pixels: np.ndarray, colour: str, tolerance: int = 6) -> int:
    rgb = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(pixels[..., :3].astype(int) - rgb).max(axis=-1) <= tolerance).sum())


def test_chromium_renders_the_charts(outputs: tuple[dict[str, Any], Path, Path], tmp_path: Path) -> None:
    _report, html, _csv = outputs
    # A copy that writes down where each chart is, read back through --dump-dom at the same width.
    measured = tmp_path / "measured.html"
    measured.write_text(html.read_text(encoding="utf-8").replace("</body>", _MEASURE + "</body>"), encoding="utf-8")
    width = 1000
    dom = chromium_run(tmp_path, f"--window-size={width},1400", "--dump-dom", measured.as_uri()).stdout
    charts = json.loads(re.search(r'data-charts="([^"]*)"', dom).group(1).replace("&quot;", '"'))  # type: ignore[union-attr]
    height = int(re.search(r'data-height="(\d+)"', dom).group(1))  # type: ignore[union-attr]
    assert {c["chart"] for c in charts} == {"counter-share", "counter-labels", "officer-share", "hours", "loudspeakers"}
    shot = tmp_path / "report.png"
    chromium_run(tmp_path, f"--window-size={width},{height}", f"--screenshot={shot}", measured.as_uri())
    image = np.asarray(Image.open(shot).convert("RGB"))
    assert image.shape[:2] == (height, width)
    # Not a blank page: text and charts, on white.
    assert (image.min(axis=-1) < 200).mean() > 0.02
    expected = {
        "counter-share": ["share", "previous"],
        "counter-labels": ["very_satisfied", "satisfied", "neutral", "dissatisfied", "very_dissatisfied"],
        "officer-share": ["share", "below"],
        "hours": ["hours"],
        "loudspeakers": ["played", "failed"],
    }
    for chart in charts:
        x, y, w, h = (round(chart[k]) for k in ("x", "y", "w", "h"))
        assert w > 300 and h > 100, chart
        region = image[y : y + h, x : x + w]
        assert len(np.unique(region.reshape(-1, 3), axis=0)) > 20, f"{chart['chart']} looks blank"
        for name in expected[chart["chart"]]:
            assert _near(region, COLOURS[name]) > 30, f"{chart['chart']}: no {name} ({COLOURS[name]}) where it is drawn"
    # And outside the charts those colours are not what makes the page: the charts drew them.
    mask = np.zeros(image.shape[:2], bool)
    for chart in charts:
        x, y, w, h = (round(chart[k]) for k in ("x", "y", "w", "h"))
        mask[y : y + h, x : x + w] = True
    assert _near(image[~mask], COLOURS["hours"]) == 0


def test_the_page_prints_on_a4(outputs: tuple[dict[str, Any], Path, Path], tmp_path: Path) -> None:
    _report, html, _csv = outputs
    pdf = tmp_path / "report.pdf"
    chromium_run(tmp_path, f"--print-to-pdf={pdf}", "--no-pdf-header-footer", html.as_uri())
    raw = pdf.read_bytes()
    boxes = re.findall(rb"/MediaBox\s*\[\s*0\s+0\s+([\d.]+)\s+([\d.]+)\s*\]", raw)
    assert len(boxes) >= 2, "a month's report takes more than one page"
    for w, h in boxes:
        assert abs(float(w) - 595.3) < 2 and abs(float(h) - 841.9) < 2  # A4 portrait, in points


def test_a_month_without_data_and_bad_arguments(commune: Commune, tmp_path: Path) -> None:
    html = tmp_path / "empty.html"
    empty = json.loads(
        run_edge(["report", "--db", str(commune.db), "--month", "2025-01", "--html", str(html), "--json"]).stdout
    )
    assert empty["totals"]["counted"] == 0 and empty["counters"] == [] and empty["officers"] == []
    assert "Không có phiếu đánh giá nào trong tháng" in html.read_text(encoding="utf-8")
    bad = run_edge(["report", "--db", str(commune.db), "--month", "2026-13"], check=False)
    assert bad.returncode == 2 and "--month must be YYYY-MM" in bad.stderr
    missing = run_edge(["report", "--db", str(tmp_path / "nothing.db"), "--month", MONTH], check=False)
    assert missing.returncode == 1 and "no collector database at" in missing.stderr
    hours = run_edge(["report", "--db", str(commune.db), "--office-hours", "17:00-07:30"], check=False)
    assert hours.returncode == 2 and "end before they start" in hours.stderr
    # The default month is the one before this one, in Vietnam's time.
    today = datetime.now(VIETNAM).date()
    last = (date(today.year, today.month, 1) - timedelta(days=1)).strftime("%Y-%m")
    assert json.loads(run_edge(["report", "--db", str(commune.db), "--json"]).stdout)["month"] == last


# -- PostgreSQL ------------------------------------------------------------------------------------------


def test_postgresql_gives_the_report_and_the_chains_sqlite_gives(commune: Commune, tmp_path: Path) -> None:
    pg = commune.also[0]
    # Both databases hold the same events, row for row.
    columns = "id, device, commune, epoch, seq, type, priority, ts, clock_synced, data"
    lite_rows = sql(commune.db, f"SELECT {columns} FROM events ORDER BY id")
    with open_db(pg) as db:
        pg_rows = list(db.query(f"SELECT {columns} FROM events ORDER BY id"))
    assert len(lite_rows) > 2000 and pg_rows == lite_rows
    # The report, its CSV files and the chains: the same from either.
    made = {}
    for backend in BACKENDS:
        csv_dir = tmp_path / backend
        args = ["report", "--db", source(commune, backend), "--month", MONTH, "--csv", str(csv_dir), "--json"]
        report = json.loads(run_edge(args).stdout)
        del report["generated_at"]
        chains = run_edge(["verify", "--db", source(commune, backend), "--json"])
        made[backend] = (report, {p.name: p.read_bytes() for p in csv_dir.iterdir()}, json.loads(chains.stdout))
    assert made["postgresql"] == made["sqlite"]
    report, files, chains = made["postgresql"]
    assert report["totals"]["counted"] > 500 and len(files) == 8 and report["chains_whole"]
    assert {(c["commune"], c["device"]) for c in chains} == {(c, d) for c, d in sql(
        commune.db, "SELECT DISTINCT commune, device FROM events WHERE type IN ('rating', 'broadcast')"
    )}  # fmt: skip


def test_postgresql_is_read_only_and_its_errors_say_what_is_wrong(
    commune: Commune,
    postgres_url: str,  # noqa: F811
) -> None:
    # Read-only at the server: even a query that would only move the collector's arrival counter on
    # is refused.
    with (
        open_db(commune.also[0]) as db,
        pytest.raises(CollectorDbError, match=r"nextval\(\) in a read-only transaction"),
    ):
        list(db.query("SELECT nextval(pg_get_serial_sequence('events', 'rowid'))"))
    with open_db(commune.also[0]) as db:
        assert list(db.query("SELECT count(*) FROM events")) == sql(commune.db, "SELECT count(*) FROM events")
    # A database the collector never wrote to.
    empty = run_edge(["report", "--db", postgres_url, "--month", MONTH], check=False)
    assert empty.returncode == 1
    assert "has no events table; is it a collector database (edge collect --db)?" in empty.stderr
    # Nothing listening; a port that is not a number; a URL that does not parse; another kind of database.
    nobody = f"postgresql://postgres:secret@127.0.0.1:{free_port()}/commune"
    cases = {
        nobody: "cannot connect to postgresql://postgres:***@127.0.0.1:",
        "postgresql://postgres:secret@127.0.0.1:port/commune": 'invalid integer value "port"',
        "postgresql://%zz@127.0.0.1/commune": "is not a PostgreSQL URL edge can use",
        "mysql://root@127.0.0.1/commune": "mysql:// is not a database edge reads",
    }
    commands = (["report", "--month", MONTH], ["verify"])  # one read side: each case through one of them
    for i, (url, reason) in enumerate(cases.items()):
        result = run_edge([*commands[i % 2], "--db", url], check=False)
        assert result.returncode == 1, (url, result.stderr)
        line = result.stderr.strip()
        assert reason in line and "\n" not in line and "secret" not in line, line
