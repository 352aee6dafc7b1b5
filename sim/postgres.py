"""A PostgreSQL server for tests and benchmarks, and fresh databases on it.

The machine's own server on 127.0.0.1:5432 (trust authentication, user ``postgres``) when one
answers; otherwise a private server made with ``initdb`` in a temporary directory and started on a
free loopback port (as the ``postgres`` system user when running as root, since PostgreSQL refuses
to run as root). Each user then takes a database of its own with a random name, dropped afterwards,
so nothing here ever touches a database it did not make.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from sim.broker import free_port

log = logging.getLogger(__name__)

#: The machine's own server, as Debian's ``postgresql`` package sets it up for tests.
MACHINE_SERVER = "postgresql://postgres@127.0.0.1:5432/test"


class PostgresUnavailable(RuntimeError):
    """No server answers and none can be made here."""


def answers(url: str) -> bool:
    """Whether a server accepts a connection at ``url`` (within 3 s)."""
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=3):
            return True
    except psycopg.Error:
        return False


def pg_bin(name: str) -> str | None:
    """Path of a PostgreSQL server program (Debian keeps them under /usr/lib/postgresql/N/bin)."""
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    return str(found[-1]) if found else shutil.which(name)


@contextlib.contextmanager
def private_server() -> Iterator[str]:
    """A server of our own in a temporary directory, stopped and removed afterwards; yields its URL."""
    initdb, pg_ctl = pg_bin("initdb"), pg_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        raise PostgresUnavailable("no PostgreSQL on 127.0.0.1:5432 and no initdb: apt-get install -y postgresql")
    work = Path(tempfile.mkdtemp(prefix="edge-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(work, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    data = work / "data"
    subprocess.run([*as_user, initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"], check=True)
    opts = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={work}"
    subprocess.run([*as_user, pg_ctl, "-D", str(data), "-o", opts, "-w", "-l", str(work / "log"), "start"], check=True)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], check=False)
        shutil.rmtree(work, ignore_errors=True)


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """The URL of a server to create databases on: the machine's own, else a private one."""
    if answers(MACHINE_SERVER):
        yield MACHINE_SERVER
        return
    log.info("no PostgreSQL answers at %s; starting a private one", MACHINE_SERVER)
    with private_server() as url:
        yield url


@contextlib.contextmanager
def fresh_database(server: str, prefix: str = "edge_test_") -> Iterator[str]:
    """``postgresql://...`` of a new, empty database on ``server``, dropped afterwards."""
    import psycopg
    from psycopg import sql

    name = f"{prefix}{secrets.token_hex(6)}"
    base = server.rsplit("/", 1)[0]
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
