"""Health events: the readings of the board (thermal zones, throttling), and a real daemon's report."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from edge.health import THERMAL_ROOT, cpu_temp_c, decode_throttled, thermal_zones
from edge.store.chain import event_digest
from sim.harness import EdgeProcess, daemon_link, run_edge, wait_for

WAIT = 60.0
MOCK_PINS = {"GPIOZERO_PIN_FACTORY": "mock", "EDGE_HEALTH__INTERVAL_S": "1"}


# -- vcgencmd get_throttled, as a Pi prints it ------------------------------------------------------


def test_a_healthy_pi_has_no_flag() -> None:
    flags = decode_throttled("throttled=0x0\n")
    assert flags.pop("raw") == "0x0"
    assert not any(flags.values()) and len(flags) == 8


def test_under_voltage_now_and_since_boot() -> None:
    # What a Pi 4 on a weak USB supply prints: under-voltage and throttling, now and since boot.
    flags = decode_throttled("throttled=0x50005")
    assert flags["raw"] == "0x50005"
    assert flags["under_voltage"] and flags["throttled"]
    assert flags["under_voltage_occurred"] and flags["throttled_occurred"]
    assert not flags["freq_capped"] and not flags["soft_temp_limit"] and not flags["soft_temp_limit_occurred"]


def test_a_past_problem_only() -> None:
    # 0x50000: under-voltage and throttling happened since boot, none now.
    flags = decode_throttled("throttled=0x50000")
    assert [f for f, on in flags.items() if on is True] == ["under_voltage_occurred", "throttled_occurred"]
    hot = decode_throttled("throttled=0x80008")
    assert [f for f, on in hot.items() if on is True] == ["soft_temp_limit", "soft_temp_limit_occurred"]


@pytest.mark.parametrize("text", ["VCHI initialization failed", "", "throttled=", "throttled=0xZZ", "temp=48.3'C"])
def test_what_is_not_get_throttled_output_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        decode_throttled(text)


# -- thermal zones -----------------------------------------------------------------------------------


def sysfs_zone(root: Path, n: int, kind: str, temp: str | None) -> None:
    zone = root / f"thermal_zone{n}"
    zone.mkdir(parents=True)
    (zone / "type").write_text(kind + "\n")
    if temp is not None:
        (zone / "temp").write_text(temp + "\n")


def test_thermal_zones_in_the_kernels_layout(tmp_path: Path) -> None:
    sysfs_zone(tmp_path, 0, "acpitz", "27800")
    sysfs_zone(tmp_path, 1, "x86_pkg_temp", "51000")
    sysfs_zone(tmp_path, 2, "iwlwifi_1", None)  # a zone without a readable temp is left out
    assert thermal_zones(tmp_path) == {"acpitz": 27.8, "x86_pkg_temp": 51.0}
    assert cpu_temp_c(tmp_path) == 51.0


def test_a_pi_reads_its_cpu_zone(tmp_path: Path) -> None:
    sysfs_zone(tmp_path, 0, "cpu-thermal", "48312")
    assert cpu_temp_c(tmp_path) == 48.3
    assert cpu_temp_c(tmp_path / "none") is None


def test_this_machines_zones_are_what_sysfs_says() -> None:
    expected: dict[str, float] = {}
    for zone in sorted(THERMAL_ROOT.glob("thermal_zone*")):
        try:
            expected[(zone / "type").read_text().strip()] = round(int((zone / "temp").read_text()) / 1000, 1)
        except (OSError, ValueError):
            continue
    assert thermal_zones() == expected
    assert (cpu_temp_c() is None) == (not expected)


# -- the daemon's health events ---------------------------------------------------------------------


def health_events(db: Path) -> list[dict[str, Any]]:
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        rows = conn.execute("SELECT data FROM events WHERE type = 'health' ORDER BY seq").fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()
    return [json.loads(r[0]) for r in rows]


def newest_rating(db: Path) -> tuple[str, int, str, str, dict[str, Any]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        row = conn.execute(
            "SELECT id, seq, type, ts, data FROM events WHERE type = 'rating' ORDER BY seq DESC LIMIT 1"
        ).fetchone()
    finally:
        conn.close()
    return row[0], row[1], row[2], row[3], json.loads(row[4])


def test_the_daemon_reports_its_health_with_the_chain_head(device) -> None:
    env = {**device.env, **MOCK_PINS}
    daemon = EdgeProcess(["run"], device.log, env).start()
    assert daemon.proc is not None
    try:
        assert wait_for(lambda: daemon_link(device.db, daemon.proc.pid) == "up", WAIT), device.log.read_text()
        data = {"counter": "q1", "officer": "nv-07", "score": 4, "label": "very_satisfied", "misuse": None}
        run_edge(["emit", "rating", "--count", "3", "--data", json.dumps(data)], env=env)
        rating = newest_rating(device.db)

        def reported() -> dict[str, Any] | None:
            found = [h for h in health_events(device.db) if (h.get("chain") or {}).get("n") == 3]
            return found[-1] if found else None

        assert wait_for(lambda: reported() is not None, WAIT), health_events(device.db)[-1:]
        health = reported()
        assert health is not None
        status = json.loads(run_edge(["status", "--json"], env=env).stdout)
        text = run_edge(["status"], env=env).stdout
    finally:
        daemon.stop()

    event_id, seq, event_type, ts, rating_data = rating
    # The head stands for the newest rating: the server can check it against the event it got.
    assert health["chain"] == {
        "epoch": rating_data["chain"]["epoch"],
        "n": 3,
        "digest": event_digest(event_id, seq, event_type, ts, rating_data),
    }
    assert health["link"]["connected"] is True and health["link"]["state"] == "up" and health["link"]["since"]
    assert health["uptime_s"] > 0 and len(health["load"]) == 3
    assert 0 < health["mem_available_bytes"] <= health["mem_total_bytes"]
    assert 0 < health["rss_bytes"] < health["mem_total_bytes"]
    assert 0 < health["disk_free_bytes"] <= shutil.disk_usage(device.state_dir).total
    # No collector acknowledges anything here: the three ratings at least are still pending.
    assert health["queue_depth"] >= 3 and health["oldest_pending_age_s"] is not None
    assert set(health["evictions"]) == {"bulk", "normal"}
    assert isinstance(health["clock_synced"], bool)
    assert health["thermal_c"] == thermal_zones()
    # No vcgencmd on this machine: no flags, rather than made-up ones.
    assert (health["throttled"] is None) == (shutil.which("vcgencmd") is None)

    assert status["chain"] == health["chain"]
    assert status["host"]["disk_free_bytes"] > 0 and len(status["host"]["load"]) == 3
    assert f"n 3, digest {health['chain']['digest'][:16]}" in text
    assert "GB disk free" in text and "load " in text


def test_status_reads_well_before_anything_is_chained(device) -> None:
    run_edge(["emit", "test"], env=device.env)
    text = run_edge(["status"], env=device.env).stdout
    assert "chain       nothing chained yet" in text
    assert "daemon      not running" in text
    assert "host        " in text and "GB disk free" in text
