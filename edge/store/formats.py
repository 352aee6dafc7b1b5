"""Versions of the state this program keeps on disk, so that switching versions never corrupts it.

A software update installs a new version beside the running one and may roll back to it (README,
"Software update"): two versions of the program then take turns on the same ``events.db`` and
``desired.json``. Each of the two formats carries two numbers:

- ``format``: the newest format of the file that a program which wrote it knew;
- ``format_compat``: the oldest format a program must know to *write* the file safely.

A program knows its own :data:`STORE_FORMAT` and :data:`DESIRED_FORMAT`. It opens a file for writing
only if the file's ``format_compat`` is at most what it knows; otherwise it refuses (the event store)
or leaves the file alone (the applied desired configuration, which the server sends again). A change
that older programs can keep writing without harm (a new table, a new nullable column, a new
``meta`` key, a new member in an event's data) raises the format and leaves ``format_compat`` where
it is; only a change older programs would damage raises ``format_compat`` too. ``device.update``
installs a version only if each side can write what the other writes (:func:`compatible`), so a
rollback always finds a store it can open.

In ``events.db`` the numbers are the ``meta`` keys ``format`` and ``format_compat`` (a store made
before they existed is format 1); in ``desired.json`` they are members of the document.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edge.exceptions import StoreError

log = logging.getLogger(__name__)

#: The event store's format this program knows, and the oldest one a program must know to write a
#: store this program has written.
STORE_FORMAT = 1
STORE_COMPAT = 1
#: The same for ``desired.json``.
DESIRED_FORMAT = 1
DESIRED_COMPAT = 1


def formats() -> dict[str, int]:
    """This program's formats, as ``device.update`` asks a new version for them."""
    return {
        "store_format": STORE_FORMAT,
        "store_compat": STORE_COMPAT,
        "desired_format": DESIRED_FORMAT,
        "desired_compat": DESIRED_COMPAT,
    }


def compatible(ours: Mapping[str, int], theirs: Mapping[str, int], on_disk: Mapping[str, int]) -> list[str]:
    """Why a program with ``theirs`` formats cannot take turns with one with ``ours`` on state now in
    ``on_disk`` (``store_compat``, ``desired_compat``); empty if it can. Missing numbers are 1, as
    for a program older than this module."""
    problems = []
    for name in ("store", "desired"):
        what = "events.db" if name == "store" else "desired.json"
        their_format = int(theirs.get(f"{name}_format", 1))
        if their_format < int(on_disk.get(f"{name}_compat", 1)):
            problems.append(f"{what} is written in a format the new version does not know ({their_format})")
        if int(theirs.get(f"{name}_compat", 1)) > int(ours.get(f"{name}_format", 1)):
            problems.append(f"the new version writes {what} in a format this version could not write after a rollback")
    return problems


def check_store(conn: sqlite3.Connection, path: Path) -> None:
    """At a writer's open: refuse a store this program cannot write, else record the formats.

    Runs in autocommit mode, after the tables exist and before any migration: a store from a newer
    program is left exactly as it was.
    """
    rows = _meta(conn)
    found = _numbers(rows)
    if found["store_compat"] > STORE_FORMAT:
        raise StoreError(
            f"{path} was written by a newer commune-edge (store format {found['store_format']}, which needs a "
            f"program that knows format {found['store_compat']}; this one knows {STORE_FORMAT}): install that "
            "version again, or move the file aside to start a new store"
        )
    want = {
        "format": max(found["store_format"], STORE_FORMAT),
        "format_compat": max(found["store_compat"], STORE_COMPAT),
    }
    if all(rows.get(key) == str(value) for key, value in want.items()):
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        for key, value in want.items():
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, str(value)),
            )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def store_formats(conn: sqlite3.Connection) -> dict[str, int]:
    """``{"store_format", "store_compat"}`` as a store's ``meta`` records them (1 when it does not)."""
    return _numbers(_meta(conn))


def _meta(conn: sqlite3.Connection) -> dict[str, str]:
    return dict(conn.execute("SELECT key, value FROM meta WHERE key IN ('format', 'format_compat')").fetchall())


def _numbers(rows: Mapping[str, str]) -> dict[str, int]:
    out = {}
    for key, name in (("format", "store_format"), ("format_compat", "store_compat")):
        try:
            out[name] = int(rows.get(key, 1))
        except ValueError:
            raise StoreError(f"meta {key} of the event store is {rows[key]!r}, not a format number") from None
    return out


def desired_readable(doc: Mapping[str, Any]) -> bool:
    """Whether this program may use (and later replace) a ``desired.json`` document."""
    if not isinstance(doc, Mapping):
        return True  # not a document at all: the reader's own checks say so
    compat = doc.get("format_compat", 1)
    return isinstance(compat, int) and compat <= DESIRED_FORMAT


def desired_file_compat(path: Path) -> int:
    """The ``format_compat`` of the ``desired.json`` at ``path`` (1 if it has none or there is none)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return 1
    compat = doc.get("format_compat", 1) if isinstance(doc, Mapping) else 1
    return compat if isinstance(compat, int) else 1


def desired_stamp() -> dict[str, int]:
    """The members a ``desired.json`` written by this program carries."""
    return {"format": DESIRED_FORMAT, "format_compat": DESIRED_COMPAT}
