"""``edge collect`` logs in with a username and a password file, as a device can.

A private Mosquitto that takes no anonymous client and checks passwords (``mosquitto_passwd``);
the device and the collector each have their own login.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from sim.broker import MosquittoBroker, current_user, find_mosquitto, free_port
from sim.harness import EdgeProcess, collector_rows, daemon_link, run_edge, wait_for, write_device_config
from tests.conftest import FAST_SYNC

DEVICE_PASSWORD = "thiet-bi-01 mat khau"
COLLECTOR_PASSWORD = "may-chu xa gia-ray"


@pytest.fixture
def password_broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    if find_mosquitto() is None:
        pytest.fail("mosquitto is not installed; run ./scripts/test, which installs it")
    work = tmp_path / "broker"
    work.mkdir()
    passwords = work / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwords), "counter-01", DEVICE_PASSWORD], check=True)
    subprocess.run(["mosquitto_passwd", "-b", str(passwords), "collector", COLLECTOR_PASSWORD], check=True)
    port = free_port()
    config = "\n".join(
        [
            f"listener {port} 127.0.0.1",
            "persistence false",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "allow_anonymous false",
            f"password_file {passwords}",
            # As root, mosquitto would drop to its own user, which cannot read the test's files.
            f"user {current_user()}",
        ]
    )
    broker = MosquittoBroker(work, port=port, config=config + "\n")
    broker.start()
    yield broker
    broker.stop()


def login(broker: MosquittoBroker, db: Path) -> list[str]:
    return ["collect", "--broker", broker.url, "--db", str(db), "--commune", "gia-ray", "--username", "collector"]


def password_file(tmp_path: Path, name: str, password: str) -> Path:
    path = tmp_path / name
    path.write_text(password + "\n", encoding="utf-8")  # with the newline an editor leaves
    path.chmod(0o600)
    return path


def test_collector_and_device_log_in_with_passwords_and_events_flow(
    tmp_path: Path, password_broker: MosquittoBroker
) -> None:
    db = tmp_path / "collector.db"
    secret = password_file(tmp_path, "collector.password", COLLECTOR_PASSWORD)
    collector = EdgeProcess(
        [*login(password_broker, db), "--password-file", str(secret), "--summary-interval", "0"],
        tmp_path / "collector.log",
    ).start()
    state = tmp_path / "state"
    config = write_device_config(tmp_path / "edge.toml", password_broker.url, state_dir=state)
    env = {
        "EDGE_CONFIG": str(config),
        "EDGE_MQTT__USERNAME": "counter-01",
        "EDGE_MQTT__PASSWORD_FILE": str(password_file(tmp_path, "device.password", DEVICE_PASSWORD)),
        **FAST_SYNC,
    }
    daemon = EdgeProcess(["run"], tmp_path / "daemon.log", env).start()
    try:
        assert daemon.proc is not None
        assert wait_for(lambda: daemon_link(state / "events.db", daemon.proc.pid) == "up", 60), "device never logged in"
        data = json.dumps({"counter": "q1", "officer": "nv-07", "score": 4, "label": "very_satisfied", "misuse": None})
        ids = run_edge(["emit", "rating", "--count", "3", "--data", data], env=env).stdout.split()
        assert wait_for(lambda: {r[0] for r in collector_rows(db, "SELECT id FROM events")} >= set(ids), 60)
        assert wait_for(
            lambda: (
                collector_rows(state / "events.db", "SELECT id FROM events WHERE acked_at IS NULL AND type = 'rating'")
                == []
            ),
            60,
        ), "the device never got the collector's evtack"
    finally:
        daemon.stop()
        out = collector.stop()
    assert json.loads(out.strip().splitlines()[-1])["stored_by_type"]["rating"] == 3
    assert COLLECTOR_PASSWORD not in (tmp_path / "collector.log").read_text()


def test_a_wrong_password_is_refused_by_the_broker_and_nothing_is_stored(
    tmp_path: Path, password_broker: MosquittoBroker
) -> None:
    db = tmp_path / "collector.db"
    wrong = password_file(tmp_path, "wrong.password", "not it")
    result = run_edge(
        [*login(password_broker, db), "--password-file", str(wrong), "--duration", "3", "--summary-interval", "0"],
        check=False,
    )
    assert "refused the connection" in result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])["stored"] == 0
    assert "not it" not in result.stderr


def test_a_password_file_without_a_username_or_unreadable_is_a_usage_error(tmp_path: Path) -> None:
    base = ["collect", "--broker", "mqtt://127.0.0.1:1", "--db", str(tmp_path / "c.db")]
    no_user = run_edge([*base, "--password-file", str(password_file(tmp_path, "p", "x"))], check=False)
    assert no_user.returncode == 2 and "--password-file needs --username" in no_user.stderr
    missing = run_edge([*base, "--username", "u", "--password-file", str(tmp_path / "absent")], check=False)
    assert missing.returncode == 2 and "cannot read the password file" in missing.stderr
