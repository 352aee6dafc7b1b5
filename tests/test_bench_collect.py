"""The collector benchmark's smoke run: ``python -m sim.bench.collect --quick`` with a tiny fleet.

Three devices, a backlog of ten events each and a second of live events, through all four cases
(SQLite and PostgreSQL, one collector and two on a shared subscription), then the raw baseline. A
smoke run measures nothing worth quoting; what it shows is that every figure the README quotes is
produced, and that every case stored each committed event exactly once with every chain whole.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_a_quick_run_gives_every_figure_and_stores_each_event_once(tmp_path: Path) -> None:
    figures_file = tmp_path / "figures.json"
    args = ["--quick", "--devices", "3", "--backlog", "10", "--rate", "15", "--seconds", "1", "--single-rows", "20"]
    done = subprocess.run(
        [sys.executable, "-m", "sim.bench.collect", *args, "--json", str(figures_file)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figures = json.loads(figures_file.read_text())

    assert list(figures["cases"]) == ["sqlite-1", "sqlite-2", "postgresql-1", "postgresql-2"]
    for name, case in figures["cases"].items():
        assert "failed" not in case, f"{name}: {case.get('failed')}"
        # One counter and two loudspeakers: 3 x 10 backlogged events, 15/s for a second.
        assert case["backlog"]["events"] == 30
        assert case["backlog"]["rate"] > 0
        assert case["live"]["events"] == 15
        for bound in ("evtack", "received_at"):
            assert math.isfinite(case["live"][bound]["p50_ms"]), (name, bound)
            assert case["live"][bound]["p95_ms"] >= case["live"][bound]["p50_ms"]
        assert case["stored_bytes_per_event"] > 100
        assert case["live"]["wire"]["bytes_per_event"] > 100
        once = case["exactly_once"]
        assert once["ok"], f"{name}: {once}"
        assert once["committed"] == once["stored_rows"] == 45
        assert once["chains_whole"] == 3
        if name.endswith("-2"):
            # Both collectors of the share group are accounted for.
            assert len(case["collectors"]) == 2

    # The raw baseline re-inserts the 45 rows of the first case, per group and one row at a time.
    assert set(figures["raw"]) == {"sqlite_500", "sqlite_1", "postgresql_500", "postgresql_1"}
    assert figures["raw"]["sqlite_500"]["rows"] == 45
    assert figures["raw"]["postgresql_1"]["rows"] == 20
    assert all(r["rate"] > 0 for r in figures["raw"].values())

    sizing = figures["sizing"]
    assert sizing["events_per_commune_day"] == 3 * (100 + 288) + 5 * (60 + 288)
    assert set(sizing["levels"]) == {"commune", "province", "country"}
    assert set(sizing["cases"]) == set(figures["cases"])
    assert figures["stored_wrongly_or_failed"] == []
    assert "STORED WRONGLY" not in done.stdout and "FAILED" not in done.stdout
