"""A PostgreSQL database for a test: a fresh one with a random name, dropped afterwards.

The server is the machine's own on 127.0.0.1:5432 when one answers, otherwise a private one made
with ``initdb`` for the test session (:mod:`sim.postgres`, which the benchmarks use too).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from sim.postgres import PostgresUnavailable, fresh_database
from sim.postgres import postgres_server as _server


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A URL of a PostgreSQL server to create test databases on."""
    with contextlib.ExitStack() as stack:
        try:
            url = stack.enter_context(_server())
        except PostgresUnavailable as exc:
            pytest.fail(str(exc))
        yield url


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """``postgresql://...`` of a new, empty database, dropped after the test."""
    with fresh_database(postgres_server) as url:
        yield url
