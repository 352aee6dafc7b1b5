"""The outbox under failure: a writer that must not die, corruption told apart from trouble,
size caps at append, a store moved to another machine, file modes and dedupe across clock jumps.

Failures are real: a tmpfs that fills up, a file the process may not write, a read-only mount, a
page of the database overwritten. Mounts are made in a private mount namespace (``unshare -m``) of
a child process, so nothing outside the test sees them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edge.config import load_config
from edge.exceptions import EventTooLarge, StoreCorrupt, StoreError
from edge.store import NewEvent, Outbox, TimeSource
from sim.broker import MosquittoBroker
from sim.harness import EdgeProcess, collector_rows, daemon_link, run_edge, wait_for, write_device_config
from tests.conftest import FAST_SYNC
from tests.mount_fixtures import IS_ROOT, needs_private_mounts, private_mount, run_child


def within(seconds: float, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on a thread and return what it returned or raise what it raised; fail the test
    if it has not finished in ``seconds`` (a hung store must fail the test, not hang it)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        pytest.fail(f"the store did not answer within {seconds} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


# -- append_many(also=...) -------------------------------------------------------------------------


def test_append_many_runs_also_in_the_same_transaction(tmp_path: Path) -> None:
    with Outbox(tmp_path / "events.db") as outbox:
        outbox.transact(lambda conn: conn.execute("CREATE TABLE schedule (id TEXT PRIMARY KEY)"))
        seen_in_txn: list[bool] = []

        def also(conn: sqlite3.Connection) -> None:
            seen_in_txn.append(conn.in_transaction)
            conn.execute("INSERT INTO schedule (id) VALUES ('b1')")

        committed = outbox.append_many([NewEvent("broadcast", {"id": "b1"})], also=also)
        assert seen_in_txn == [True]
        assert outbox.query("SELECT id FROM schedule") == [("b1",)]
        assert [e.id for e in outbox.pending()] == [committed[0].id]

        # A failing ``also`` leaves neither its rows nor the events behind.
        def also_fails(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO schedule (id) VALUES ('b2')")
            raise ValueError("schedule refused")

        with pytest.raises(ValueError, match="schedule refused"):
            outbox.append_many([NewEvent("broadcast", {"id": "b2"})], also=also_fails)
        assert outbox.query("SELECT id FROM schedule") == [("b1",)]
        assert len(outbox.pending()) == 1


# -- 1. the event size cap -------------------------------------------------------------------------


def test_an_event_over_the_size_cap_is_refused_at_append(tmp_path: Path) -> None:
    with Outbox(tmp_path / "events.db", max_event_bytes=61_440) as outbox:
        with pytest.raises(EventTooLarge) as refused:
            outbox.append("test", {"pad": "x" * 102_400})
        assert str(refused.value) == "test event data is 102,410 bytes; the limit is 61,440"
        assert isinstance(refused.value, StoreError) and isinstance(refused.value, ValueError)
        # Measured in bytes, not characters: 25,000 Vietnamese letters are 75,000 bytes of UTF-8.
        with pytest.raises(EventTooLarge, match="75,011 bytes"):
            outbox.append("test", {"text": "ệ" * 25_000})
        # One oversized event refuses the whole batch: nothing of it is committed.
        with pytest.raises(EventTooLarge):
            outbox.append_many([NewEvent("test", {"n": 1}), NewEvent("test", {"pad": "y" * 70_000})])
        assert outbox.list_events() == []
        assert outbox.append("test", {"pad": "z" * 61_000}).seq == 1  # under the cap: stored


def test_the_daemon_cap_follows_the_sync_batch_size(tmp_path: Path) -> None:
    config = load_config(
        write_device_config(tmp_path / "edge.toml", "mqtt://127.0.0.1:1883", state_dir=tmp_path / "state"), {}
    )
    with Outbox.from_config(config) as outbox:
        assert outbox.max_event_bytes == 61_440  # batch_max_bytes is 128 KiB by default: 60 KiB applies
    small = config.model_copy(update={"sync": config.sync.model_copy(update={"batch_max_bytes": 16_384})})
    with Outbox.from_config(small) as outbox:
        assert outbox.max_event_bytes == 16_384


def test_an_oversized_emit_is_refused_and_the_small_events_behind_it_arrive(tmp_path: Path) -> None:
    """The reproduction from the issue: a broker with ``max_packet_size 65536``, one 100 KB event,
    then 20 small ones. The big one must be refused with a reason; the 20 must all arrive."""
    broker = MosquittoBroker(tmp_path / "broker", extra_config="max_packet_size 65536").start()
    state = tmp_path / "state"
    config = write_device_config(tmp_path / "edge.toml", broker.url, state_dir=state)
    env = {"EDGE_CONFIG": str(config), **FAST_SYNC}
    db = tmp_path / "collector.db"
    collector = EdgeProcess(
        ["collect", "--broker", broker.url, "--db", str(db), "--commune", "gia-ray", "--summary-interval", "0"],
        tmp_path / "collector.log",
    ).start()
    daemon = EdgeProcess(["run"], tmp_path / "daemon.log", env).start()
    try:
        big = run_edge(["emit", "test", "--data", json.dumps({"pad": "x" * 102_400})], env=env, check=False)
        assert big.returncode != 0
        assert big.stderr.strip() == "edge emit: test event data is 102,410 bytes; the limit is 61,440"
        assert big.stdout == ""  # no id printed: nothing was committed
        small = run_edge(["emit", "test", "--count", "20"], env=env).stdout.split()
        assert len(small) == 20
        assert wait_for(
            lambda: set(small) <= {r[0] for r in collector_rows(db, "SELECT id FROM events WHERE type = 'test'")},
            timeout=60,
        ), (tmp_path / "daemon.log").read_text()[-3000:]
    finally:
        daemon.stop()
        collector.stop()
        broker.stop()


# -- 2. the writer thread --------------------------------------------------------------------------


def test_a_listener_that_raises_does_not_stop_appends(tmp_path: Path) -> None:
    with Outbox(tmp_path / "events.db") as outbox:
        calls: list[int] = []

        def listener(last_seq: int) -> None:
            calls.append(last_seq)
            raise RuntimeError("listener broke")

        outbox.add_listener(listener)
        first = within(30, lambda: outbox.append("rating", {"score": 4}))
        second = within(30, lambda: outbox.append("rating", {"score": 5}))
        assert (first.seq, second.seq) == (1, 2)
        # Listeners run on the writer after the append is answered.
        assert wait_for(lambda: calls == [1, 2], timeout=30), calls
        assert outbox.alive()


def test_a_writer_that_stops_fails_every_append_at_once(tmp_path: Path) -> None:
    with Outbox(tmp_path / "events.db") as outbox:

        def listener(last_seq: int) -> None:
            raise SystemExit("listener called sys.exit")  # not an Exception: it ends the thread

        outbox.add_listener(listener)
        committed = within(30, lambda: outbox.append("rating", {"score": 4}))
        assert committed.seq == 1  # the commit itself went through before the listener ran
        assert wait_for(lambda: not outbox.alive(), timeout=30)
        with pytest.raises(StoreError, match=r"event store writer stopped: SystemExit: listener called sys.exit"):
            within(30, lambda: outbox.append("rating", {"score": 5}))
        with pytest.raises(StoreError, match="writer stopped"):
            within(30, lambda: outbox.mark_acked([(1, 1)]))
        assert [e.seq for e in outbox.pending()] == [1]  # reading still works


def test_a_request_the_writer_cannot_reach_in_time_is_withdrawn(tmp_path: Path) -> None:
    with Outbox(tmp_path / "events.db") as outbox:
        outbox.wait_timeout_s = 1.0
        inside, release = threading.Event(), threading.Event()
        errors: list[BaseException] = []

        def slow(conn: sqlite3.Connection) -> None:
            inside.set()
            release.wait(60)  # a disk that stalls in the middle of a transaction

        def run_slow() -> None:
            try:
                outbox.transact(slow)
            except StoreError as exc:
                errors.append(exc)

        slow_caller = threading.Thread(target=run_slow)
        slow_caller.start()
        assert inside.wait(30)
        with pytest.raises(StoreError, match="withdrawn, nothing was written"):
            outbox.append("rating", {"score": 2})
        # The slow request's own caller gave up waiting too, while its transaction still ran: it is
        # told the write may yet be committed (the disk is released only once it has been told).
        assert wait_for(lambda: errors, 30)
        release.set()
        slow_caller.join(30)
        assert len(errors) == 1 and "may yet be committed" in str(errors[0])
        outbox.wait_timeout_s = 60.0
        assert outbox.append("rating", {"score": 3}).seq == 1  # the withdrawn rating never got a seq
        # ... nor a link in the chain.
        assert [(e.data["score"], e.data["chain"]["n"]) for e in outbox.list_events()] == [(3, 1)]


FULL_CARD = r"""
import json, logging, os, sys, time
from pathlib import Path
from edge.store import NewEvent, Outbox

card = Path(sys.argv[1])
db = card / "state" / "events.db"
logged = []
class Keep(logging.Handler):
    def emit(self, record):
        logged.append(record.getMessage())
logging.getLogger("edge.store").addHandler(Keep())
out = {}
# A cap nothing reaches while the card is prepared: no eviction may run behind the test's back.
outbox = Outbox(db, max_bytes=1024 * 1024)
for i in range(30):
    outbox.append_many([NewEvent("health", {"pad": "h" * 900, "n": i}) for _ in range(10)])
# Grow the WAL past its checkpoint size: from then on a commit reuses the WAL's blocks, while a
# checkpoint has to grow the database file.
for i in range(40):
    outbox.append("health", {"pad": "w" * 100, "n": i})
# The writer checks the size after answering an append; anything it does after this no-op
# request has begun comes after that check, so the card is quiet from here on.
outbox.transact(lambda conn: None, durable=False)
st = os.statvfs(card)
with open(card / "ballast", "wb") as f:
    f.write(b"\0" * (st.f_bavail * st.f_frsize - 8 * 1024))
outbox.max_bytes = 512 * 1024  # as a live configuration change would

def answer(fn):
    try:
        return fn()
    except Exception as exc:
        return type(exc).__name__
# Committed into the reused WAL; the size check after it must evict, and its checkpoint finds
# the card full.
out["first"] = answer(lambda: [c.seq for c in outbox.append_many(
    [NewEvent("health", {"pad": "x" * 35000}) for _ in range(2)])])
# The eviction runs on the writer thread after the append has been answered: wait for its word.
deadline = time.monotonic() + 60
while not logged and time.monotonic() < deadline:
    time.sleep(0.05)
out["logged"] = logged[:]
out["second"] = answer(lambda: outbox.append("rating", {"score": 5}).seq)
out["alive_when_full"] = outbox.alive()
os.unlink(card / "ballast")
out["after_freeing"] = answer(lambda: outbox.append("rating", {"score": 4}).seq)
outbox.enforce_cap()
stats = outbox.stats()
out["db_bytes"] = stats.db_bytes
out["critical"] = stats.depth_by_priority["critical"]
out["alive"] = outbox.alive()
outbox.close()
print(json.dumps(out))
"""


@needs_private_mounts
def test_a_full_card_during_eviction_does_not_stop_the_writer(tmp_path: Path) -> None:
    card = tmp_path / "card"
    card.mkdir()
    result = run_child(tmp_path, FULL_CARD, [str(card)], private_mount(f"mount -t tmpfs -o size=1m tmpfs {card}"))
    assert isinstance(result["first"], list) and len(result["first"]) == 2  # the append was committed
    assert any("byte cap failed" in m and "full" in m for m in result["logged"]), result["logged"]
    # With the card full, the next append is answered (refused as StoreFull, or committed), not left waiting.
    assert result["second"] == "StoreFull" or isinstance(result["second"], int)
    assert result["alive_when_full"]
    assert isinstance(result["after_freeing"], int)
    assert result["db_bytes"] <= 512 * 1024  # once there is room, the cap is enforced again
    assert result["critical"] == (2 if isinstance(result["second"], int) else 1)
    assert result["alive"]


# -- 3. corruption, trouble, read-only opening and the daemon lock ----------------------------------

POWER_CUT = r"""
import json, os, sys
from edge.store import Outbox
outbox = Outbox(sys.argv[1], owner=True)
committed = outbox.append("rating", {"score": 2})
print(json.dumps({"id": committed.id}))
sys.stdout.flush()
os._exit(0)  # like a power cut: the rating is in the WAL, nothing is checkpointed or closed
"""

OPEN_AS_DAEMON = r"""
import json, sys
from edge.store import Outbox
try:
    Outbox(sys.argv[1], owner=True).close()
    print(json.dumps({"opened": True}))
except Exception as exc:
    print(json.dumps({"raised": type(exc).__name__, "message": str(exc)}))
"""


@pytest.mark.parametrize("trouble", ["unwritable file", "read-only file system"])
def test_a_healthy_store_that_cannot_be_written_is_not_quarantined(tmp_path: Path, trouble: str) -> None:
    state = tmp_path / "state"
    db = state / "events.db"
    rating = run_child(tmp_path, POWER_CUT, [str(db)])["id"]
    assert Path(f"{db}-wal").stat().st_size > 0
    if trouble == "unwritable file":
        db.chmod(0o444)
        # Root writes whatever the mode says; without CAP_DAC_OVERRIDE it is held to it like anyone.
        prefix = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner"] if IS_ROOT else []
    else:
        if not IS_ROOT or shutil.which("unshare") is None:
            pytest.skip("a read-only bind mount needs root")
        prefix = private_mount(f"mount --bind {state} {state} && mount -o remount,bind,ro {state}")
    before = sorted(p.name for p in state.iterdir())
    result = run_child(tmp_path, OPEN_AS_DAEMON, [str(db)], prefix)
    db.chmod(0o640)
    assert result.get("raised") == "StoreError", result  # trouble, not StoreCorrupt
    assert str(db) in result["message"] and "readonly" in result["message"].replace("-", "").replace(" ", "")
    after = sorted(p.name for p in state.iterdir())
    assert not [n for n in after if ".corrupt-" in n], after
    assert set(before) <= set(after)
    with Outbox(db) as outbox:
        assert [e.id for e in outbox.pending()] == [rating]  # the rating is still there, still pending


def test_a_corrupt_store_is_quarantined_and_its_readable_pending_events_come_across(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    with Outbox(db, owner=True, machine_id="pi-1") as outbox:
        committed = [
            outbox.append("rating", {"score": 1 + i % 5, "press": i, "note": "x" * 200}, dedupe_key=f"press-{i}")
            for i in range(300)
        ]
        outbox.mark_acked([(1, 50)])
        before = {e.id: e for e in outbox.list_events(limit=1000)}
        old_epoch = outbox.epoch
    # Overwrite the page that holds press 150 (rows are ~400 bytes with their chain link, ~10 to a 4 KiB page).
    raw = bytearray(db.read_bytes())
    page = raw.index(b'"press":150,') // 4096
    spoiled = {int(n) for n in re.findall(rb'"press":(\d+),', bytes(raw[page * 4096 : (page + 1) * 4096]))}
    assert 150 in spoiled and min(spoiled) > 50
    raw[page * 4096 : (page + 1) * 4096] = b"\xa5" * 4096
    db.write_bytes(bytes(raw))

    with Outbox(db, owner=True, machine_id="pi-1") as outbox:
        assert outbox.quarantined is not None and outbox.quarantined.exists()
        assert outbox.epoch != old_epoch
        ratings = outbox.list_events(type="rating", limit=1000)
        expected = {c.id for i, c in enumerate(committed) if i >= 50 and i not in spoiled}
        assert {e.id for e in ratings} == expected  # every readable pending one, none acknowledged
        for e in ratings:
            old = before[e.id]
            assert (e.type, e.priority, e.ts, e.clock_synced, e.data_json) == (
                old.type,
                old.priority,
                old.ts,
                old.clock_synced,
                old.data_json,
            )
            assert e.acked_at is None
        (report,) = [e.data for e in outbox.list_events(type="security")]
        assert report["kind"] == "store_quarantined"
        assert (report["recovered"], report["unreadable"], report["readable"]) == (len(expected), len(spoiled), True)
        counters = outbox.counters()
        assert counters["quarantines"] == 1
        assert counters["recovered_events"] == len(expected)
        assert counters["unreadable_events"] == len(spoiled)
        # The dedupe keys came across too: a press the panel repeats after the restart is still one press.
        again = outbox.append("rating", {"score": 1}, dedupe_key="press-200")
        assert again.duplicate and again.id == committed[200].id
        delivered = outbox.append("rating", {"score": 1}, dedupe_key="press-10")  # acknowledged before
        assert delivered.duplicate and (delivered.id, delivered.seq) == (committed[10].id, 0)
        # A press whose row was lost is not held against a repeat of it: the repeat is stored.
        assert not outbox.append("rating", {"score": 1}, dedupe_key="press-150").duplicate
        assert outbox.integrity_check() == "ok"
    # The quarantined file is kept, unchanged in name, for whoever investigates.
    assert list(tmp_path.glob("events.db.corrupt-*"))


def test_status_and_events_only_read_the_store(tmp_path: Path) -> None:
    state = tmp_path / "state"
    config = write_device_config(tmp_path / "edge.toml", "mqtt://127.0.0.1:1883", state_dir=state)
    env = {"EDGE_CONFIG": str(config)}
    # No store yet: a reason, and nothing created.
    missing = run_edge(["status"], env=env, check=False)
    assert missing.returncode == 1 and "no event store at" in missing.stderr
    assert not (state / "events.db").exists()
    # A corrupt store: reported, never moved aside, no socket bound, no lock taken.
    state.mkdir()
    garbage = b"\x00garbage" * 4096
    (state / "events.db").write_bytes(garbage)
    for args in (["status"], ["events"], ["status", "--json"]):
        broken = run_edge(args, env=env, check=False)
        assert broken.returncode == 1 and "corrupt" in broken.stderr, broken.stderr
    assert sorted(p.name for p in state.iterdir()) == ["events.db"]
    assert (state / "events.db").read_bytes() == garbage
    # A healthy store is read as it is.
    (state / "events.db").unlink()
    run_edge(["emit", "rating", "--data", '{"score": 5}'], env=env)
    size = (state / "events.db").stat().st_size
    listed = json.loads(run_edge(["events", "--json"], env=env).stdout)
    assert [(e["type"], e["data"]["score"], e["data"]["chain"]["n"]) for e in listed] == [("rating", 5, 1)]
    assert json.loads(run_edge(["status", "--json"], env=env).stdout)["queue"]["depth"] == 1
    assert (state / "events.db").stat().st_size == size
    assert not (state / "wake.sock").exists() and not (state / "daemon.lock").exists()


def test_a_second_daemon_store_on_one_state_directory_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "state" / "events.db"
    with Outbox(db, owner=True) as daemon:
        with pytest.raises(StoreError, match=rf"another edge run \(pid {os.getpid()}\) holds .*daemon\.lock"):
            Outbox(db, owner=True)
        with Outbox(db) as emit:  # edge emit appends next to the daemon
            emit.append("test", {"n": 1})
        assert len(daemon.pending()) == 1
    with Outbox(db, owner=True) as after:  # closing let go of the lock
        assert len(after.pending()) == 1


def test_a_second_edge_run_exits_with_the_holder(device) -> None:
    daemon = device.daemon().start()
    try:
        assert daemon.proc is not None
        assert wait_for(lambda: daemon_link(device.db, daemon.proc.pid) is not None, timeout=60)
        second = run_edge(["run"], env=device.env, check=False, timeout=60)
        assert second.returncode == 1
        assert f"another edge run (pid {daemon.proc.pid}) holds {device.state_dir / 'daemon.lock'}" in second.stderr
        assert daemon.running
    finally:
        daemon.stop()


def test_a_non_daemon_never_quarantines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "events.db"
    db.write_bytes(b"not a database" * 1000)
    monkeypatch.setattr("edge.store.outbox.CORRUPT_WAIT_S", 0.5)
    with pytest.raises(StoreCorrupt, match="edge run moves a corrupt store aside"):
        Outbox(db)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["events.db"]


# -- 4. a store on another machine -------------------------------------------------------------------


def test_a_store_moved_to_another_machine_starts_a_new_epoch(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    with Outbox(db, owner=True, machine_id="serial=1000a machine-id=aa", device_id="counter-01") as outbox:
        epoch = outbox.epoch
        ids = [outbox.append("rating", {"n": i}).id for i in range(3)]
        outbox.mark_acked([(1, 2)])
    with Outbox(db, owner=True, machine_id="serial=1000a machine-id=aa", device_id="counter-01") as outbox:
        assert outbox.epoch == epoch and outbox.moved is None  # same machine: nothing happens
    # The card is cloned into another Pi.
    with Outbox(db, owner=True, machine_id="serial=2000b machine-id=aa", device_id="counter-01") as outbox:
        assert outbox.epoch != epoch
        moved = outbox.epoch
        assert {e.id for e in outbox.pending()} >= set(ids)  # acknowledged or not, all go again
        (event,) = [e.data for e in outbox.list_events(type="security")]
        assert event["kind"] == "store_moved"
        assert (event["old_epoch"], event["new_epoch"]) == (epoch, moved)
        assert event["made_pending_again"] == 2 and event["pending"] == 3
        assert event["old_machine"] != event["new_machine"]
        assert "1000a" not in json.dumps(event)  # the machine id itself is never reported
        assert outbox.counters()["store_moves"] == 1
    with Outbox(db, owner=True, machine_id="serial=2000b machine-id=aa", device_id="counter-01") as outbox:
        assert outbox.epoch == moved  # settled on its new machine
    # Re-commissioned as another device on the same Pi: a new epoch as well.
    with Outbox(db, owner=True, machine_id="serial=2000b machine-id=aa", device_id="counter-02") as outbox:
        assert outbox.epoch != moved
        assert outbox.moved is not None and outbox.moved["new_device"] == "counter-02"
        assert outbox.counters()["store_moves"] == 2
    # edge emit (not the owner) never rebinds.
    with Outbox(db, machine_id="somewhere else", device_id="counter-09") as outbox:
        assert outbox.moved is None


# -- 5. file modes ------------------------------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_state_directory_and_database_are_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        state = tmp_path / "state"
        with Outbox(state / "events.db") as outbox:  # edge emit from a shell, before any daemon
            outbox.append("rating", {"officer": "can-bo-07", "score": 5})
            modes = {p.name: _mode(p) for p in state.iterdir()}
        assert _mode(state) == 0o750
        assert modes == {"events.db": 0o640, "events.db-wal": 0o640, "events.db-shm": 0o640}

        # The daemon's state directory made by a plain mkdir (0755 under this umask) and a database
        # left 0644 by an earlier version: the owning store narrows both.
        daemon_dir = tmp_path / "daemon-state"
        daemon_dir.mkdir()
        sqlite3.connect(daemon_dir / "events.db").close()
        assert (_mode(daemon_dir), _mode(daemon_dir / "events.db")) == (0o755, 0o644)
        with Outbox(daemon_dir / "events.db", owner=True) as outbox:
            outbox.bind_wake_socket().close()
            outbox.append("rating", {"score": 4})
            modes = {p.name: _mode(p) for p in daemon_dir.iterdir()}
        assert _mode(daemon_dir) == 0o750
        assert modes == {
            "events.db": 0o640,
            "events.db-wal": 0o640,
            "events.db-shm": 0o640,
            "daemon.lock": 0o640,
            "wake.sock": 0o600,
        }
    finally:
        os.umask(old)


# -- 6. dedupe keys and the clock ---------------------------------------------------------------------


class FakeClocks:
    """The wall clock, the boot clock and the boot id, set by the test."""

    def __init__(self) -> None:
        self.wall = 1_750_000_000.0
        self.up = 100.0
        self.boot = "boot-1"

    def source(self) -> TimeSource:
        return TimeSource(wall=lambda: self.wall, since_boot=lambda: self.up, boot=lambda: self.boot)


def test_a_wall_clock_jump_does_not_expire_dedupe_keys(tmp_path: Path) -> None:
    clocks = FakeClocks()
    with Outbox(tmp_path / "events.db", time_source=clocks.source()) as outbox:
        first = outbox.append("rating", {"score": 4}, dedupe_key="press-1", dedupe_ttl_s=3600)
        # fake-hwclock booted the Pi a month behind; NTP now steps the clock forward.
        clocks.wall += 30 * 86400
        clocks.up += 60
        outbox.housekeeping()
        assert outbox.append("rating", {"score": 4}, dedupe_key="press-1", dedupe_ttl_s=3600).duplicate
        clocks.up = 100 + 3599
        outbox.housekeeping()
        assert outbox.append("rating", {"score": 4}, dedupe_key="press-1", dedupe_ttl_s=3600).duplicate
        # An hour of the machine's running time later the key is gone, whatever the wall clock says.
        clocks.wall -= 40 * 86400
        clocks.up = 100 + 3601
        outbox.housekeeping()
        again = outbox.append("rating", {"score": 4}, dedupe_key="press-1", dedupe_ttl_s=3600)
        assert not again.duplicate and again.id != first.id


def test_dedupe_keys_keep_their_time_left_across_a_power_cut(tmp_path: Path) -> None:
    clocks = FakeClocks()
    db = tmp_path / "events.db"
    with Outbox(db, owner=True, time_source=clocks.source()) as outbox:
        first = outbox.append("rating", {"score": 2}, dedupe_key="press-9", dedupe_ttl_s=3600)
        clocks.up = 1100.0  # 1000 s after the press: 2600 s left
        outbox.housekeeping()
    # Power cut; the Pi boots again with the clock fake-hwclock saved, a day behind the truth.
    clocks.boot, clocks.up, clocks.wall = "boot-2", 5.0, clocks.wall - 86400
    with Outbox(db, owner=True, time_source=clocks.source()) as outbox:
        clocks.wall += 2 * 86400  # NTP steps it forward
        clocks.up = 5 + 2599
        outbox.housekeeping()
        repeat = outbox.append("rating", {"score": 2}, dedupe_key="press-9", dedupe_ttl_s=3600)
        assert repeat.duplicate and repeat.id == first.id
        clocks.up = 5 + 2601
        outbox.housekeeping()
        assert not outbox.append("rating", {"score": 2}, dedupe_key="press-9", dedupe_ttl_s=3600).duplicate


def test_a_store_from_before_boot_clocks_is_migrated(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    conn = sqlite3.connect(db)
    conn.executescript(
        "CREATE TABLE dedupe (key TEXT PRIMARY KEY, id TEXT NOT NULL, seq INTEGER NOT NULL, expires REAL NOT NULL)"
        " WITHOUT ROWID;"
    )
    conn.execute("INSERT INTO dedupe VALUES ('press-old', '0190a0b0-0000-7000-8000-000000000000', 7, ?)", (1e12,))
    conn.commit()
    conn.close()
    with Outbox(db) as outbox:
        again = outbox.append("rating", {"score": 1}, dedupe_key="press-old")
        assert again.duplicate and again.seq == 7
        outbox.append("rating", {"score": 1}, dedupe_key="press-new")
        assert len(outbox.pending()) == 1
