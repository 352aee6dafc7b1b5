"""Shared fixtures: a private Mosquitto per test, device configs, the collector."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sim.broker import MosquittoBroker, find_mosquitto
from sim.harness import EdgeProcess, write_device_config

#: Fixtures shared by several test modules, kept in their own files.
pytest_plugins = ["tests.commands_fixtures"]

#: Short timeouts so the chaos tests recover in seconds rather than minutes.
FAST_SYNC = {
    "EDGE_SYNC__ACK_TIMEOUT_S": "2",
    "EDGE_SYNC__RECONNECT_MIN_S": "0.1",
    "EDGE_SYNC__RECONNECT_MAX_S": "1",
    "EDGE_HEALTH__INTERVAL_S": "3600",
}


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A private mosquitto on a free loopback port; ``broker.kill()``/``broker.start()`` keep the port."""
    if find_mosquitto() is None:
        pytest.fail("mosquitto is not installed; run ./scripts/test, which installs it")
    b = MosquittoBroker(tmp_path / "broker")
    b.start()
    try:
        yield b
    finally:
        b.stop()


@dataclass
class Device:
    """A device's config file, state directory and the environment that points ``edge`` at it."""

    config: Path
    state_dir: Path
    env: dict[str, str]
    log: Path

    @property
    def db(self) -> Path:
        return self.state_dir / "events.db"

    def daemon(self) -> EdgeProcess:
        return EdgeProcess(["run"], self.log, self.env)


@pytest.fixture
def device(tmp_path: Path, broker: MosquittoBroker) -> Device:
    state = tmp_path / "state"
    config = write_device_config(tmp_path / "edge.toml", broker.url, state_dir=state)
    return Device(config, state, {"EDGE_CONFIG": str(config), **FAST_SYNC}, tmp_path / "daemon.log")


@dataclass
class CollectorHandle:
    db: Path
    process: EdgeProcess

    def start(self) -> None:
        self.process.start()

    def stop(self) -> str:
        return self.process.stop()


@pytest.fixture
def collector(tmp_path: Path, broker: MosquittoBroker) -> Iterator[CollectorHandle]:
    """``edge collect`` for commune gia-ray, not yet started."""
    db = tmp_path / "collector.db"
    proc = EdgeProcess(
        ["collect", "--broker", broker.url, "--db", str(db), "--commune", "gia-ray", "--summary-interval", "0"],
        tmp_path / "collector.log",
    )
    handle = CollectorHandle(db, proc)
    try:
        yield handle
    finally:
        proc.stop()
