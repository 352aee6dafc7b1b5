"""``edge browse``: the collector's database in a real Datasette, read over HTTP as a browser would."""

from __future__ import annotations

import json
import sqlite3
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from edge.server.collector import CollectorStore
from edge.server.db import VIETNAM
from edge.store import Outbox
from sim.broker import free_port
from sim.harness import EdgeProcess, run_edge, wait_for
from tests.report_fixtures import MONTH, deliver, make_commune

WAIT = 60.0


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as response:
        body = response.read().decode("utf-8")
    return json.loads(body) if url.split("?")[0].endswith(".json") else body


def up(url: str) -> bool:
    try:
        get(url)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False
    return True


def sql(db: Path, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return [tuple(r) for r in conn.execute(query, params)]
    finally:
        conn.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, Path]]:
    root = tmp_path_factory.mktemp("browse")
    commune = make_commune(root)
    # A device last heard from two hours ago.
    store = CollectorStore(commune.db)
    with Outbox(root / "quiet" / "events.db") as outbox:
        outbox.append("health", {"uptime_s": 12})
        deliver(outbox, "gia-ray", "counter-09", store)
    store.close()
    two_hours_ago = (datetime.now().astimezone() - timedelta(hours=2)).isoformat(timespec="milliseconds")
    conn = sqlite3.connect(commune.db)
    with conn:
        conn.execute("UPDATE events SET received_at = ? WHERE device = 'counter-09'", (two_hours_ago,))
    conn.close()
    port = free_port()
    meta = root / "metadata.json"
    proc = EdgeProcess(
        ["browse", "--db", str(commune.db), "--port", str(port), "--metadata-out", str(meta)], root / "browse.log"
    ).start()
    base = f"http://127.0.0.1:{port}"
    try:
        assert wait_for(lambda: up(f"{base}/-/versions.json"), WAIT), (root / "browse.log").read_text()
        yield base, commune.db, meta
    finally:
        proc.stop()


def test_browse_serves_the_metadata(served: tuple[str, Path, Path]) -> None:
    base, db, meta = served
    metadata = get(f"{base}/-/metadata.json")
    assert metadata == json.loads(meta.read_text(encoding="utf-8"))
    assert metadata["title"] == "Dữ liệu thiết bị của xã"
    database = metadata["databases"][db.stem]
    assert database["tables"]["events"]["title"] == "Sự kiện từ thiết bị"
    columns = sql(db, "SELECT name FROM pragma_table_info('events')")
    assert {c for (c,) in columns} == set(database["tables"]["events"]["columns"])  # every column described
    assert set(database["queries"]) == {
        "ratings_by_officer",
        "devices_offline",
        "failed_broadcasts",
        "tamper_incidents",
    }
    # The pages show it.
    page = get(f"{base}/{db.stem}/events")
    assert "Sự kiện từ thiết bị" in page and "Mã sự kiện (UUIDv7)" in page
    assert "Phiếu đánh giá theo cán bộ trong tháng" in get(f"{base}/{db.stem}")
    # The same metadata is what --print-metadata prints.
    printed = json.loads(run_edge(["browse", "--db", str(db), "--print-metadata"]).stdout)
    assert printed == metadata


def votes_by_officer(db: Path, month: str) -> dict[tuple[str, str], tuple[int, int, int]]:
    return {
        (commune, officer or ""): (votes, satisfied, flagged)
        for commune, officer, votes, satisfied, flagged in sql(
            db,
            "SELECT commune, json_extract(data, '$.officer'), "
            "sum(json_extract(data, '$.misuse') IS NULL), "
            "sum(json_extract(data, '$.misuse') IS NULL "
            "    AND json_extract(data, '$.label') IN ('very_satisfied', 'satisfied')), "
            "sum(json_extract(data, '$.misuse') IS NOT NULL) "
            "FROM events WHERE type = 'rating' AND strftime('%Y-%m', ts, '+7 hours') = ? GROUP BY 1, 2",
            (month,),
        )
    }


def by_officer(rows: list[dict[str, Any]]) -> dict[tuple[str, str], tuple[int, int, int]]:
    return {(r["commune"], r["officer"]): (r["votes"], r["satisfied"], r["flagged"]) for r in rows}


def test_the_canned_queries_answer_what_plain_sql_says(served: tuple[str, Path, Path]) -> None:
    base, db, _meta = served
    rows = get(f"{base}/{db.stem}/ratings_by_officer.json?month={MONTH}&_shape=array")
    assert rows and by_officer(rows) == votes_by_officer(db, MONTH)
    for r in rows:
        assert r["share_satisfied"] == round(100.0 * r["satisfied"] / r["votes"], 1)
    # Without a month: this month, in Vietnam's time.
    now = get(f"{base}/{db.stem}/ratings_by_officer.json?_shape=array")
    assert by_officer(now) == votes_by_officer(db, datetime.now(VIETNAM).strftime("%Y-%m"))

    offline = get(f"{base}/{db.stem}/devices_offline.json?_shape=array")
    assert [(r["commune"], r["device"]) for r in offline] == [("gia-ray", "counter-09")]
    assert get(f"{base}/{db.stem}/devices_offline.json?minutes=180&_shape=array") == []

    failed = get(f"{base}/{db.stem}/failed_broadcasts.json?_shape=array")
    assert sorted((r["device"], r["broadcast_id"], r["reason"]) for r in failed) == sorted(
        sql(
            db,
            "SELECT device, json_extract(data, '$.broadcast_id'), json_extract(data, '$.reason') FROM events "
            "WHERE type = 'broadcast' AND json_extract(data, '$.state') = 'failed'",
        )
    )
    assert failed and all(r["reason"] for r in failed)

    incidents = get(f"{base}/{db.stem}/tamper_incidents.json?_shape=array")
    starts = sql(
        db,
        "SELECT json_extract(data, '$.incident'), json_extract(data, '$.kind') FROM events "
        "WHERE type = 'tamper' AND json_extract(data, '$.state') = 'start'",
    )
    assert sorted((r["incident"], r["kind"]) for r in incidents) == sorted(starts)
    by_id = {r["incident"]: r for r in incidents}
    assert by_id["inc-1112"]["seconds"] == 240 and by_id["inc-1130"]["ended"] is None


def test_browse_refuses_a_file_that_is_not_a_collector_database(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    result = run_edge(["browse", "--db", str(other), "--port", str(free_port())], check=False)
    assert result.returncode == 1 and "has no events table" in result.stderr


def test_browse_on_postgresql_says_it_is_for_the_sqlite_file() -> None:
    # No server is needed to refuse: Datasette serves SQLite files only.
    for extra in ([], ["--print-metadata"]):
        result = run_edge(["browse", "--db", "postgresql://collector@db.gia-ray.local/commune", *extra], check=False)
        assert result.returncode == 1
        line = result.stderr.strip()
        assert "edge browse serves the collector's SQLite file in Datasette, not a PostgreSQL database" in line
        assert "psql" in line and "edge report / edge verify --db with the same URL" in line
