"""Shared fixtures: a private Mosquitto per test, device configs, the collector (SQLite or PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edge.server.db import CollectorDbError, open_db
from sim.broker import MosquittoBroker, find_mosquitto
from sim.harness import EdgeProcess, collector_rows, write_device_config

#: Fixtures shared by several test modules, kept in their own files.
pytest_plugins = ["tests.commands_fixtures"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The slow tests first (stable order otherwise): with ``-n 4 --dist worksteal`` the quick ones
    then fill in around them, and the suite does not end with one worker running a long test alone."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


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
    """``edge collect`` and its database: ``db`` is the SQLite file; with ``url`` (PostgreSQL) it
    stores there instead, and ``db`` is unused."""

    db: Path
    process: EdgeProcess
    url: str | None = None

    @property
    def target(self) -> str:
        """What the collector's ``--db`` is."""
        return self.url or str(self.db)

    def start(self) -> None:
        self.process.start()

    def stop(self) -> str:
        return self.process.stop()

    def rows(self, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of ``query`` (``?`` placeholders) from the collector's database, whichever it is; none
        before the collector has made its tables."""
        if self.url is None:
            return [tuple(r) for r in collector_rows(self.db, query, params)]
        try:
            with open_db(self.url) as db:
                return list(db.query(query, params))
        except CollectorDbError as exc:
            if "has no events table" in str(exc):
                return []
            raise


@pytest.fixture
def collector(request: pytest.FixtureRequest, tmp_path: Path, broker: MosquittoBroker) -> Iterator[CollectorHandle]:
    """``edge collect`` for commune gia-ray, not yet started, storing in SQLite.

    ``@pytest.mark.parametrize("collector", ["sqlite", "postgresql"], indirect=True)`` runs a test
    on each backend; the module then imports the ``postgres_server`` and ``postgres_url`` fixtures
    (tests.pg_fixtures).
    """
    backend = getattr(request, "param", "sqlite")
    db = tmp_path / "collector.db"
    url = request.getfixturevalue("postgres_url") if backend == "postgresql" else None
    proc = EdgeProcess(
        ["collect", "--broker", broker.url, "--db", url or str(db), "--commune", "gia-ray", "--summary-interval", "0"],
        tmp_path / "collector.log",
    )
    handle = CollectorHandle(db, proc, url)
    try:
        yield handle
    finally:
        proc.stop()
