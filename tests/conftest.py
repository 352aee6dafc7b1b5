"""Shared fixtures: a private Mosquitto per test, temporary state directories."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sim.broker import MosquittoBroker, find_mosquitto


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
