"""A PostgreSQL database for a test: a fresh one with a random name, dropped afterwards.

The machine's own server on 127.0.0.1:5432 (trust authentication, user ``postgres``) when one
answers; otherwise a private server made with ``initdb`` in a temporary directory and started on a
free loopback port for the test session (as the ``postgres`` system user when the tests run as
root, since PostgreSQL refuses to run as root).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

MACHINE_SERVER = "postgresql://postgres@127.0.0.1:5432/test"


def _answers(url: str) -> bool:
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=3):
            return True
    except psycopg.Error:
        return False


def _pg_bin(name: str) -> str | None:
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    return str(found[-1]) if found else shutil.which(name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _private_server() -> Iterator[str]:
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.fail("no PostgreSQL on 127.0.0.1:5432 and no initdb: apt-get install -y postgresql")
    work = Path(tempfile.mkdtemp(prefix="edge-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(work, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    data = work / "data"
    subprocess.run([*as_user, initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"], check=True)
    opts = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={work}"
    subprocess.run([*as_user, pg_ctl, "-D", str(data), "-o", opts, "-w", "-l", str(work / "log"), "start"], check=True)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], check=False)
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A URL of a PostgreSQL server to create test databases on."""
    if _answers(MACHINE_SERVER):
        yield MACHINE_SERVER
        return
    with _private_server() as url:
        yield url


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """``postgresql://...`` of a new, empty database, dropped after the test."""
    import psycopg
    from psycopg import sql

    name = f"edge_test_{secrets.token_hex(6)}"
    base = postgres_server.rsplit("/", 1)[0]
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(postgres_server, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
