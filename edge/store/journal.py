"""The command journal: which signed commands this device has seen, what became of them, and the
replies (``ack``, ``cfg/reported``) still to be delivered.

Both live in the event store's database, so a command's outcome and the reply that reports it are
committed in one transaction: after a power cut the device neither runs a command twice (its
``cmd_id`` is on disk before it runs) nor forgets to say what happened (the reply is on disk until
the broker has it). A command has one outcome: once it is ``succeeded``, ``failed`` or ``rejected``,
nothing moves it again, so its final ack is written once even if a handler finishes after the
command was reported ``interrupted``.

The replay set is kept by *command time* (:class:`edge.clock.CommandClock`), the time the commands
are judged by, not by a clock that may be days off after a power cut: a command is forgotten only
when it has certainly expired, and the time it was forgotten by is stored first, so it stays expired
after any restart.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from edge.clock import CommandClock, SystemTime
from edge.jsonfmt import compact
from edge.store.outbox import Outbox

log = logging.getLogger(__name__)

#: How long a command stays in the replay set after its ``exp`` (in command time): a margin for a
#: judgement a little off, e.g. a clock corrected backwards between two housekeeping runs.
REPLAY_GRACE_S = 600.0

#: The states a command leaves only once, for its final one (as SQL).
_OPEN = "state IN ('accepted', 'in_progress')"


@dataclass(frozen=True)
class Outcome:
    """The journal's record of one command."""

    cmd_id: str
    name: str
    state: str
    reason: str | None = None
    result: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"state": self.state}
        if self.reason:
            out["reason"] = self.reason
        if self.result:
            out["result"] = self.result
        return out


@dataclass(frozen=True)
class Reply:
    id: int
    topic: str
    payload: bytes
    retain: bool


def _dumps(value: Mapping[str, Any]) -> str:
    return compact(value)


class CommandJournal:
    """Replay set, outcomes and pending replies, on an :class:`Outbox`'s writer.

    ``clock`` is the command time (default: this machine's clocks, with the outbox's
    :class:`~edge.clock.ClockMonitor`, remembered in the outbox's ``meta``); the command channel
    judges commands by the same one.
    """

    def __init__(self, outbox: Outbox, clock: CommandClock | None = None) -> None:
        self.outbox = outbox
        self.clock = clock or CommandClock(outbox, SystemTime(outbox.clock))

    @staticmethod
    def _queue_reply(conn: sqlite3.Connection, reply: tuple[str, bytes, bool] | None) -> None:
        if reply is not None:
            topic, payload, retain = reply
            conn.execute("INSERT INTO replies (topic, payload, retain) VALUES (?, ?, ?)", (topic, payload, int(retain)))

    def get(self, cmd_id: str) -> Outcome | None:
        rows = self.outbox.query("SELECT cmd_id, name, state, reason, result FROM commands WHERE cmd_id = ?", (cmd_id,))
        if not rows:
            return None
        cid, name, state, reason, result = rows[0]
        return Outcome(cid, name, state, reason, json.loads(result) if result else {})

    def record(
        self,
        cmd_id: str,
        name: str,
        exp: float,
        state: str,
        *,
        reason: str | None = None,
        result: Mapping[str, Any] | None = None,
        reply: tuple[str, bytes, bool] | None = None,
    ) -> bool:
        """Add a command with its first state, and queue its reply, in one durable commit.

        Returns False (and changes nothing) if ``cmd_id`` is already in the journal.
        """
        result_json = _dumps(result) if result else None

        def op(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "INSERT OR IGNORE INTO commands (cmd_id, name, exp, state, reason, result, updated) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (cmd_id, name, exp, state, reason, result_json, time.time()),
            )
            if cur.rowcount == 0:
                return False
            self._queue_reply(conn, reply)
            return True

        return self.outbox.transact(op)

    def update(
        self,
        cmd_id: str,
        state: str,
        *,
        reason: str | None = None,
        result: Mapping[str, Any] | None = None,
        reply: tuple[str, bytes, bool] | None = None,
    ) -> bool:
        """Move a command that is still open (``accepted``, ``in_progress``) to a new state and queue
        its reply, in one durable commit. Returns False, and changes nothing, if the command already
        has its final state (or is not in the journal)."""
        result_json = _dumps(result) if result else None

        def op(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                f"UPDATE commands SET state = ?, reason = ?, result = ?, updated = ? WHERE cmd_id = ? AND {_OPEN}",
                (state, reason, result_json, time.time(), cmd_id),
            )
            if cur.rowcount == 0:
                return False
            self._queue_reply(conn, reply)
            return True

        return self.outbox.transact(op)

    def reply(self, topic: str, payload: bytes, retain: bool = False) -> None:
        """Queue a reply that belongs to no journal entry (a rejection, a ``cfg/reported``)."""
        self.outbox.transact(lambda conn: self._queue_reply(conn, (topic, payload, retain)))

    def unfinished(self) -> list[Outcome]:
        """Commands accepted but never finished: the daemon stopped (or the power went) mid-way."""
        rows = self.outbox.query(f"SELECT cmd_id, name, state, reason, result FROM commands WHERE {_OPEN}")
        return [Outcome(r[0], r[1], r[2], r[3], json.loads(r[4]) if r[4] else {}) for r in rows]

    def pending_replies(self, after_id: int = 0, limit: int = 100) -> list[Reply]:
        rows = self.outbox.query(
            "SELECT id, topic, payload, retain FROM replies WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit)
        )
        return [Reply(int(r[0]), str(r[1]), bytes(r[2]), bool(r[3])) for r in rows]

    def reply_sent(self, reply_id: int) -> None:
        """The broker has the reply (PUBACK). Losing this delete only means sending it again."""
        self.outbox.transact(lambda conn: conn.execute("DELETE FROM replies WHERE id = ?", (reply_id,)), durable=False)

    def purge(self) -> int:
        """Forget commands whose life ended more than :data:`REPLAY_GRACE_S` ago in command time
        (housekeeping); nothing while the clock cannot be trusted at all. Returns how many."""
        now = self.clock.forget_before()
        if now is None:
            return 0
        cutoff = now - REPLAY_GRACE_S

        def op(conn: sqlite3.Connection) -> int:
            return int(conn.execute(f"DELETE FROM commands WHERE exp < ? AND NOT {_OPEN}", (cutoff,)).rowcount)

        # The floor is stored (forget_before) in an earlier commit than this one: the store never
        # holds the deletion without it.
        purged = self.outbox.transact(op, durable=False)
        if purged:
            log.info(
                "forgot %d commands that expired before %s", purged, time.strftime("%F %T", time.localtime(cutoff))
            )
        return purged
