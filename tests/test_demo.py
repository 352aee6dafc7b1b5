"""The README's demo command, run as a person runs it: a counter and a loudspeaker in the simulator, a
private broker killed halfway, and the collector's record read back at the end."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from sim import demo

pytestmark = pytest.mark.slow  # about half a minute of real playing time


def test_the_demo_shows_the_announcement_cut_by_the_emergency_at_the_collector_and_nothing_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = demo.main(["--workdir", str(tmp_path), "--seconds", "8"])

    printed = capsys.readouterr().out
    assert status == 0, printed
    assert "chaos       broker killed with SIGKILL and restarted (while the siren plays)" in printed
    assert "missing: 0" in printed
    # What the collector holds is what the demo printed: both devices, the proof of play in its order.
    conn = sqlite3.connect(tmp_path / "collector.db")
    try:
        devices = {d for (d,) in conn.execute("SELECT DISTINCT device FROM events")}
        proof = [
            json.loads(data)
            for (data,) in conn.execute(
                "SELECT data FROM events WHERE device = ? AND type = 'broadcast' ORDER BY seq", (demo.LOUDSPEAKER,)
            )
        ]
        tests = conn.execute("SELECT COUNT(*) FROM events WHERE device = ? AND type = 'test'", (demo.COUNTER,))
        counter_tests = tests.fetchone()[0]
    finally:
        conn.close()
    assert devices == {demo.COUNTER, demo.LOUDSPEAKER}
    assert counter_tests > 0
    assert [(e["broadcast_id"], e["state"]) for e in proof] == demo.EXPECTED
    siren = next(e for e in proof if e["broadcast_id"] == demo.EMERGENCY and e["state"] == "finished")
    assert siren["duration_s"] == pytest.approx(3.0, abs=0.2) and siren["level_dbfs"] == pytest.approx(-14.0, abs=1)
    spoken = [e for e in proof if e["broadcast_id"] == demo.ANNOUNCEMENT and e["state"] in ("preempted", "finished")]
    assert all(e["level_dbfs"] is not None and e["level_dbfs"] > -40 for e in spoken)
    for event in proof:
        assert f"{event['broadcast_id']} {event['state']}" in printed
