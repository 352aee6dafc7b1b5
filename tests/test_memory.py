"""An idle daemon loads only what its role needs: read from the health events of real ``edge run`` children.

Each health event lists which of the heavy modules (numpy, OpenCV, PyAV, sounddevice, soundfile,
pymodbus) the daemon has loaded. An idle counter with a working speaker and a loudspeaker must
have none of them; a counter with a camera has OpenCV and numpy, but no audio stack and no PyAV.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sim.audio import SimSoundCard
from sim.harness import EdgeProcess, daemon_link, wait_for, write_device_config

WAIT = 60.0
#: Health events to wait for: the first is written as the daemon starts, later ones show it idle.
IDLE_REPORTS = 4


@pytest.fixture
def card(tmp_path: Path) -> Iterator[SimSoundCard]:
    with SimSoundCard(tmp_path / "card") as c:
        yield c


def idle_health(tmp_path: Path, broker_url: str, role: str, env: dict[str, str], extra: str = "") -> dict[str, Any]:
    """Start ``edge run`` for ``role``, let it idle through a few health reports, return the last one."""
    state = tmp_path / "state"
    config = write_device_config(
        tmp_path / "edge.toml", broker_url, role=role, device=f"{role}-01", state_dir=state, extra=extra
    )
    db = state / "events.db"
    log = tmp_path / "daemon.log"
    run_env = {"EDGE_CONFIG": str(config), "GPIOZERO_PIN_FACTORY": "mock", "EDGE_HEALTH__INTERVAL_S": "1", **env}
    daemon = EdgeProcess(["run"], log, run_env).start()
    assert daemon.proc is not None
    try:
        assert wait_for(lambda: daemon_link(db, daemon.proc.pid) == "up", WAIT), log.read_text()
        assert wait_for(lambda: len(health_events(db)) >= IDLE_REPORTS, WAIT), log.read_text()
        assert daemon.running, log.read_text()
        return health_events(db)[-1]
    finally:
        daemon.stop()


def health_events(db: Path) -> list[dict[str, Any]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        rows = conn.execute("SELECT data FROM events WHERE type = 'health' ORDER BY seq").fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()
    return [json.loads(r[0]) for r in rows]


def panel_events(db: Path) -> list[dict[str, Any]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        rows = conn.execute("SELECT data FROM events WHERE type = 'panel' ORDER BY seq").fetchall()
    finally:
        conn.close()
    return [json.loads(r[0]) for r in rows]


def test_an_idle_counter_with_a_working_speaker_loads_no_audio_stack(tmp_path: Path, broker, card) -> None:
    health = idle_health(tmp_path, broker.url, "counter", card.env)
    assert health["heavy_modules"] == []
    # The speaker was looked for at start and found: speech is ready, only not loaded.
    speaker = [e for e in panel_events(tmp_path / "state" / "events.db") if e.get("kind") == "speaker"]
    assert all(e.get("state") != "unavailable" for e in speaker), speaker
    assert list((tmp_path / "state").rglob("*.wav")), "the thank-you was not rendered at start"


def test_a_missing_speaker_is_still_reported_at_start(tmp_path: Path, broker) -> None:
    health = idle_health(tmp_path, broker.url, "counter", {"EDGE_RATING__FEEDBACK__AUDIO_DEVICE": "no-such-speaker"})
    assert health["heavy_modules"] == []
    speaker = [e for e in panel_events(tmp_path / "state" / "events.db") if e.get("kind") == "speaker"]
    assert speaker and speaker[0]["state"] == "unavailable" and "no-such-speaker" in speaker[0]["error"]


def test_an_idle_loudspeaker_loads_no_audio_stack(tmp_path: Path, broker, card) -> None:
    health = idle_health(tmp_path, broker.url, "loudspeaker", card.env)
    assert health["heavy_modules"] == []


def test_a_counter_with_a_camera_loads_opencv_but_no_audio_and_no_pyav(tmp_path: Path, broker, card) -> None:
    camera = '[[camera]]\nname = "q1-cam"\nsource = "http://127.0.0.1:1/camera.mjpg"\nprofile = "sim-counter-640x480"\n'
    health = idle_health(tmp_path, broker.url, "counter", card.env, extra=camera)
    assert "cv2" in health["heavy_modules"] and "numpy" in health["heavy_modules"]
    assert not {"av", "sounddevice", "soundfile", "pymodbus"} & set(health["heavy_modules"])
