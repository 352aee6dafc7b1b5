"""Exactly once in effect, through kill -9 of the daemon, the broker and `edge emit` itself.

Every test drives the real command line against a private Mosquitto and the real collector, and
checks the collector's own database: every id `edge emit` printed is there exactly once, and
nothing else is. Each test runs twice: with the collector storing in SQLite, and in PostgreSQL.
"""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import subprocess
import threading
import time

import pytest

from edge.store import Outbox
from sim.harness import EdgeProcess, daemon_link, edge_command, run_edge, wait_for
from tests.pg_fixtures import postgres_server, postgres_url  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.slow, pytest.mark.parametrize("collector", ["sqlite", "postgresql"], indirect=True)]


class Emitter:
    """`edge emit` in the background, collecting the ids it prints (each printed after its commit)."""

    def __init__(self, device, count: int, interval: float = 0.0, event_type: str = "test") -> None:
        import os

        self.ids: list[str] = []
        self.proc = subprocess.Popen(
            [
                *edge_command(),
                "emit",
                event_type,
                "--count",
                str(count),
                "--interval",
                str(interval),
                "--data",
                '{"probe":true}',
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **device.env},
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.ids.append(line.strip())

    def wait(self, timeout: float = 120) -> list[str]:
        self.proc.wait(timeout)
        self._reader.join(10)
        return self.ids


def oldest_pending_age(device) -> float | None:
    status = json.loads(run_edge(["status", "--json"], env=device.env).stdout)
    age: float | None = status["queue"]["oldest_pending_age_s"]
    return age


def stored_test_ids(collector) -> list[str]:
    return [r[0] for r in collector.rows("SELECT id FROM events WHERE type = 'test'")]


def start_connected(device) -> EdgeProcess:
    """Start the daemon and return once it is connected to the broker (so a kill hits a running daemon)."""
    daemon = device.daemon().start()
    assert daemon.proc is not None
    assert wait_for(lambda: daemon_link(device.db, daemon.proc.pid) == "up", timeout=30), "daemon never connected"
    return daemon


def assert_exactly_once(collector, printed: list[str], *, repeats_expected: bool = True) -> None:
    """Every printed id is stored, nothing else is, and (after chaos) the collector really did see
    repeats and discard them: exactly-once must have been earned, not be an accident of a calm run."""
    stored = stored_test_ids(collector)
    assert len(printed) == len(set(printed)), "emit printed an id twice"
    assert set(stored) == set(printed), (
        f"missing {len(set(printed) - set(stored))}, unexpected {len(set(stored) - set(printed))}"
    )
    # Per device epoch, a seq is stored once: no event was counted twice under two ids.
    dup = collector.rows("SELECT epoch, seq, COUNT(*) FROM events GROUP BY epoch, seq HAVING COUNT(*) > 1")
    assert dup == []
    summary = json.loads(collector.stop().strip().splitlines()[-1])  # this collector run's counters
    if repeats_expected:
        assert summary["duplicates"] > 0, f"no repeat reached the collector: {summary}"


def test_daemon_killed_ten_times_while_emitting(device, collector) -> None:
    collector.start()
    emitter = Emitter(device, 2000, interval=0.004)
    rng = random.Random(20261121)
    kills = 0
    while emitter.proc.poll() is None or kills < 10:
        daemon = start_connected(device)
        time.sleep(rng.uniform(0.2, 1.0))
        # Every other kill lands while the collector is stalled (SIGSTOP): what it received meanwhile
        # is stored after the daemon died without hearing its evtacks, so it must be sent again.
        stall = kills % 2 == 1
        if stall:
            collector.process.proc.send_signal(signal.SIGSTOP)
            time.sleep(0.3)
        daemon.kill()
        if stall:
            collector.process.proc.send_signal(signal.SIGCONT)
        kills += 1
    printed = emitter.wait()
    assert emitter.proc.returncode == 0
    assert len(printed) == 2000
    assert kills >= 10

    final = device.daemon().start()
    try:
        assert wait_for(lambda: len(stored_test_ids(collector)) >= 2000, timeout=60)
    finally:
        final.stop()
    assert_exactly_once(collector, printed)


def test_broker_killed_and_restarted_while_emitting(device, collector, broker) -> None:
    # An ack timeout shorter than a broker restart: batches whose evtack was lost with the broker are
    # sent again by the timer as well as after the reconnect, so repeats surely reach the collector.
    device.env["EDGE_SYNC__ACK_TIMEOUT_S"] = "0.5"
    collector.start()
    daemon = start_connected(device)
    emitter = Emitter(device, 1500, interval=0.003)
    rng = random.Random(7)
    kills = 0
    # Ten kills at least, and on for as long as events are emitted. A kill makes a repeat only when it
    # falls between the collector's commit and the device hearing its evtack, a few milliseconds since
    # both ends send small packets at once (TCP_NODELAY): five kills sometimes made none.
    while kills < 10 or emitter.proc.poll() is None:
        # Each kill hits a connected daemon: wait for it to be back on the broker first.
        assert wait_for(lambda: daemon_link(device.db) == "up", timeout=30)
        time.sleep(rng.uniform(0.3, 0.9))
        # Every other kill finds the collector stalled (SIGSTOP, as a machine under load or a slow
        # disk would): the batches it received meanwhile are stored when it goes on, after the broker
        # died with the connection their evtacks needed, so the device must send them again.
        stall = kills % 2 == 1
        if stall:
            collector.process.proc.send_signal(signal.SIGSTOP)
            time.sleep(0.3)
        broker.kill()
        if stall:
            collector.process.proc.send_signal(signal.SIGCONT)
        kills += 1
        time.sleep(rng.uniform(0.1, 0.6))
        broker.start()
    printed = emitter.wait()
    try:
        assert wait_for(lambda: len(stored_test_ids(collector)) >= len(printed), timeout=60)
    finally:
        daemon.stop()
    assert len(printed) == 1500
    assert_exactly_once(collector, printed)


def test_backlog_arrives_in_seq_order_when_the_collector_returns(device, collector) -> None:
    collector.start()
    daemon = device.daemon().start()
    try:
        before = Emitter(device, 50).wait()
        assert wait_for(lambda: len(stored_test_ids(collector)) >= 50, timeout=30)
        collector.stop()  # its retained status now says offline
        printed = Emitter(device, 1200).wait()
        # Another type interleaved, to check the order per type.
        printed_other = Emitter(device, 300, event_type="test-b").wait()
        more = Emitter(device, 200).wait()
        # Let the backlog's oldest event wait longer than the ack timeout (2 s) before the collector returns.
        assert wait_for(lambda: (oldest_pending_age(device) or 0) > 2.5, timeout=30)
        collector.start()
        printed = before + printed + more
        assert wait_for(lambda: len(stored_test_ids(collector)) >= len(printed), timeout=60)
        assert wait_for(lambda: len(collector.rows("SELECT id FROM events WHERE type = 'test-b'")) >= 300, timeout=30)
    finally:
        daemon.stop()
    assert_exactly_once(collector, printed, repeats_expected=False)
    # The backlog (everything appended while the collector was away) arrives in seq order per
    # type. The 50 events sent before are only checked for exactly-once: had the link dropped
    # while they flowed, newer live events would rightly have overtaken the unacknowledged ones.
    backlog_ids = set(printed[50:])
    for etype, expected in (("test", len(backlog_ids)), ("test-b", len(printed_other))):
        rows = collector.rows("SELECT id, seq FROM events WHERE type = ? ORDER BY rowid", (etype,))
        seqs = [seq for event_id, seq in rows if etype == "test-b" or event_id in backlog_ids]
        assert len(seqs) == expected
        assert seqs == sorted(seqs), f"{etype} backlog arrived out of seq order"


def test_emit_killed_mid_stream_loses_nothing_it_printed(device, collector) -> None:
    collector.start()
    daemon = device.daemon().start()
    emitter = Emitter(device, 100_000)
    assert wait_for(lambda: len(emitter.ids) > 300, timeout=30)
    emitter.proc.kill()
    printed = emitter.wait()
    assert emitter.proc.returncode == -9
    try:
        assert wait_for(lambda: len(stored_test_ids(collector)) >= len(printed), timeout=60)
    finally:
        daemon.stop()
    stored = set(stored_test_ids(collector))
    assert set(printed) <= stored, f"{len(set(printed) - stored)} printed ids never arrived"
    # The one event emit may have committed but not yet printed when it died is the only extra.
    assert len(stored - set(printed)) <= 1
    with Outbox(device.db) as outbox:
        assert outbox.integrity_check() == "ok"
    if collector.url is None:
        conn = sqlite3.connect(collector.db)
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        conn.close()
