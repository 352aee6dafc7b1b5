"""The README's demo command, run as a person runs it: a counter (with its camera) and a loudspeaker in
the simulator, a private broker killed halfway, and the collector's record read back at the end."""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from pathlib import Path

import pytest

from sim import demo
from sim.camera_scene import CounterScene
from sim.counter_camera import WALKERS_EVERY_S
from tests.test_camera_evidence_rig import audit_counter_media

pytestmark = pytest.mark.slow  # about half a minute of real playing time


def test_the_demo_shows_the_announcement_cut_by_the_emergency_at_the_collector_and_nothing_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = demo.main(["--workdir", str(tmp_path), "--seconds", "8"])

    printed = capsys.readouterr().out
    assert status == 0, printed
    assert "chaos       broker killed with SIGKILL and restarted (while the siren plays)" in printed
    for device in (demo.COUNTER, demo.LOUDSPEAKER):
        assert re.search(rf"{demo.COMMUNE}/{device}: committed on the device: [1-9]\d*; .*; missing: 0\n", printed)
    assert re.search(r"committed on the devices: (\d+); stored at the collector: \1; missing: 0\n", printed)
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
        camera = {
            etype: [
                json.loads(data)
                for (data,) in conn.execute(
                    "SELECT data FROM events WHERE device = ? AND type = ? ORDER BY seq", (demo.COUNTER, etype)
                )
            ]
            for etype in ("presence", "tamper", "evidence", "rating")
        }
        (rating_id, rating_seq) = conn.execute(
            "SELECT id, seq FROM events WHERE device = ? AND type = 'rating'", (demo.COUNTER,)
        ).fetchone()
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

    # The counter's camera: the officer seen sitting down, one incident for the covered lens, and the low
    # rating's clip linked to it, blurred, on the device where the demo says it is.
    assert "present" in [p["state"] for p in camera["presence"]]
    assert all((p["camera"], p["counter"]) == (demo.CAMERA, demo.COUNTER_NAME) for p in camera["presence"])
    start, end = camera["tamper"]
    assert (start["kind"], start["state"], end["kind"], end["state"]) == ("covered", "start", "covered", "end")
    assert start["incident"] == end["incident"]
    [low] = [e for e in camera["evidence"] if e["reason"] == "low_rating"]
    [rating] = camera["rating"]
    assert (low["rating_id"], low["window_id"], rating["score"]) == (rating_id, rating["window_id"], 1)
    assert low["blurred_faces"] >= 1 and low["masked"] is True
    [tamper_clip] = [e for e in camera["evidence"] if e["reason"] == "tamper"]
    assert tamper_clip["clip_id"] == start["clip_id"]
    clip = tmp_path / "state" / "media" / low["file"]
    assert hashlib.sha256(clip.read_bytes()).hexdigest() == low["sha256"]
    # Both clips, against the scene drawn again from what it did: each face blurred where the scene put
    # it, no face the detector finds, the privacy mask black, 0600 files in 0700 directories.
    record = json.loads((tmp_path / "counter-scene.json").read_text())
    timeline = [(t, action, params) for t, action, params in record["timeline"]]
    scene = CounterScene(timeline, duration_s=record["duration_s"], walkers_every_s=WALKERS_EVERY_S)
    audits = audit_counter_media(tmp_path / "state" / "media", scene)
    assert sorted(a.path.name for a in audits) == sorted(Path(e["file"]).name for e in camera["evidence"])
    assert f"the low rating's clip, on {demo.COMMUNE}/{demo.COUNTER}: {clip}" in printed
    assert f"sha256 {low['sha256']} (as in its evidence event)" in printed
    assert f"blurred_faces {low['blurred_faces']}, privacy mask applied: True" in printed
    assert f"covered start, incident {start['incident']}" in printed
    assert f"for low_rating (rating seq {rating_seq}, id {rating_id}, window {low['window_id']})" in printed

    # It ends with what the commune does at the month's end: the chains verify whole, the report is written.
    assert re.search(rf"{demo.COMMUNE}/{demo.COUNTER}  epoch \w+  whole", printed), printed
    report = re.search(r"the month's report \(HTML, A4, open it in a browser\): (\S+)\n", printed)
    assert report, printed
    html = Path(report.group(1)).read_text(encoding="utf-8")
    assert demo.COUNTER_NAME in html and "<svg" in html
