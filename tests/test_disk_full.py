"""A counter whose SD card fills up: every rating it acknowledged is kept, the condition is reported,
and it recovers when space returns, with and without a restart; a daemon started on a card that is
already full stays up, says so, and starts in full by itself once there is room.

The card is real: an 8 MiB ext4 image (4 KiB blocks and 5 % reserved, as Raspberry Pi OS formats
its root), loop-mounted in a private mount namespace. The daemon is the real ``edge run`` entered
into that namespace, with the shipped serial panel profile on a simulated MCU (a pseudo-terminal):
the MCU repeats each press until it is acknowledged, and it is acknowledged only after the commit.
What fills the card is a file that keeps growing while there is room, as a runaway log does.

The test reads the card only through commands run in the namespace (``edge status``, a read-only
look at the store): SQLite resolves symbolic links in a database path, so the ``/proc/<pid>/root``
view of the card would lead it to the empty directory outside.

Ground truth is the MCU's own list of acknowledged presses. Each press's dedupe key in the device's
store (``rating:<model>:<button>:<mseq>:<uptime>``) names the rating it became; the collector must
hold exactly those ratings, once each, and the chain must be whole.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import pytest

from sim.broker import MosquittoBroker
from sim.harness import EdgeProcess, collector_rows, edge_command, run_edge, wait_for, write_device_config
from sim.serial_mcu import SerialMcu, SimPress
from tests.conftest import FAST_SYNC, CollectorHandle
from tests.mount_fixtures import MountNamespace, ext4_image, needs_loop_ext4, private_mount, run_child

if TYPE_CHECKING:
    from tests.systemd_fixtures import NotifySocket

pytestmark = [pytest.mark.slow, needs_loop_ext4]
pytest_plugins = ["tests.systemd_fixtures"]

CARD_MIB = 8
PANEL_MODEL = "ce-panel-4"  # the shipped serial-4btn profile's model, part of every press's dedupe key
WAIT = 60.0  # only reached when the test is about to fail

#: A look at the device's store as any reader takes it (read-only): its integrity, and which rating
#: each press's dedupe key became.
READ_STORE = r"""
import json, sys
from edge.store import Outbox
with Outbox.open_readonly(sys.argv[1]) as outbox:
    print(json.dumps({"integrity": outbox.integrity_check(), "keys": dict(outbox.query("SELECT key, id FROM dedupe"))}))
"""


@dataclass
class EdgeInNamespace(EdgeProcess):
    """An ``edge`` process entered into the card's mount namespace (``nsenter`` execs it, so
    :meth:`kill` is a kill -9 of ``edge`` itself)."""

    prefix: Sequence[str] = ()

    def start(self) -> EdgeInNamespace:
        self._log = open(self.log_path, "a", encoding="utf-8")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [*self.prefix, *edge_command(), *self.args],
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env={**os.environ, **self.env},
        )
        return self


class Filler:
    """Whatever else fills the card: a file that grows while there is room and takes any room that
    appears, until :meth:`remove`.

    ext4 sets room aside for the metadata of data not yet written out (delayed allocation) and gives
    what it did not need back once the data is on disk, which a writer short of space forces: a
    first ENOSPC leaves blocks that the next writer to ask gets. So the filler syncs its file at each
    ENOSPC, and the card is ``full`` only when a write fails right after a sync: nothing is spare,
    not the 32 KiB of a new -shm file, not one WAL frame.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.full = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="filler", daemon=True)

    def start(self) -> Filler:
        self._thread.start()
        return self

    def _run(self) -> None:
        synced = False
        with open(self.path, "ab", buffering=0) as f:
            while not self._stop.is_set():
                if self._take(f):
                    synced = False
                    continue
                if synced:  # even after a sync: the card is full; look again in a moment
                    self.full.set()
                    self._stop.wait(0.05)
                with contextlib.suppress(OSError):
                    os.fsync(f.fileno())
                synced = True

    @staticmethod
    def _take(f: BinaryIO) -> bool:
        """Write what fits of a chunk; smaller ones once a large one does not (seen on this image:
        a 64 KiB write refused with 13 blocks left)."""
        for size in (65536, 4096, 1):
            try:
                f.write(b"\0" * size)
            except OSError:  # ENOSPC
                continue
            return True
        return False

    def remove(self) -> None:
        """Stop growing and delete the file: space returns."""
        self._stop.set()
        self._thread.join(10)
        self.path.unlink()


@dataclass
class Card:
    """The device's state directory on the small card, and ``edge`` commands run against it."""

    ns: MountNamespace
    state_dir: Path
    env: dict[str, str]
    log: Path
    daemons: list[EdgeProcess] = field(default_factory=list)

    def seen(self, path: Path) -> Path:
        """``path`` on the card, as the test (outside the namespace) reaches it."""
        return self.ns.outside(path)

    def run(self, *command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.ns.prefix(), *command],
            capture_output=True,
            text=True,
            env={**os.environ, **self.env},
            timeout=120,
            check=False,
        )

    def edge(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run(*edge_command(), *args)

    def status(self) -> dict[str, Any]:
        done = self.edge("status", "--json")
        assert done.returncode == 0, done.stderr
        report: dict[str, Any] = json.loads(done.stdout)
        return report

    def read_store(self) -> dict[str, Any]:
        done = self.run(sys.executable, "-c", READ_STORE, str(self.state_dir / "events.db"))
        assert done.returncode == 0, done.stderr
        found: dict[str, Any] = json.loads(done.stdout)
        return found

    def start_daemon(self) -> EdgeProcess:
        daemon = EdgeInNamespace(["run"], self.log, self.env, prefix=self.ns.prefix()).start()
        self.daemons.append(daemon)
        assert daemon.proc is not None
        pid = daemon.proc.pid

        def started() -> bool:
            done = self.edge("status", "--json")
            return done.returncode == 0 and json.loads(done.stdout)["daemon"]["pid"] == pid

        assert wait_for(started, WAIT, interval=0.5), self.log.read_text()[-3000:]
        return daemon

    def filler(self) -> Filler:
        return Filler(self.seen(self.state_dir.parent / "filler")).start()


@pytest.fixture
def card(tmp_path: Path, broker: MosquittoBroker) -> Iterator[Card]:
    mount = tmp_path / "card"
    mount.mkdir()
    image = ext4_image(tmp_path / "card.img", CARD_MIB)
    state = mount / "state"
    config = write_device_config(tmp_path / "edge.toml", broker.url, state_dir=state)
    env = {
        "EDGE_CONFIG": str(config),
        **FAST_SYNC,
        "EDGE_PANEL__PROFILE": "serial-4btn",
        "EDGE_PANEL__PORT": str(tmp_path / "ttyPANEL"),
        "EDGE_RATING__MODE": "always",
        "EDGE_RATING__FEEDBACK__SPEAK": "false",
        # A cap far above the card: it is the disk that fills, not the store's budget.
        "EDGE_STORE__MAX_BYTES": str(256 << 20),
    }
    with MountNamespace(f"mount -o loop {image} {mount}") as ns:
        card = Card(ns, state, env, tmp_path / "daemon.log")
        try:
            yield card
        finally:
            for daemon in card.daemons:
                daemon.stop()


def rating_ids(card: Card) -> dict[str, str]:
    """Dedupe key -> id of every rating in the device's store."""
    keys: dict[str, str] = card.read_store()["keys"]
    return keys


def key_of(press: SimPress) -> str:
    return f"rating:{PANEL_MODEL}:{press.key}"


def press_while_full(mcu: SerialMcu, card: Card, buttons: Sequence[int]) -> int:
    """Press while the card is full; return how many the store refused once every press is
    accounted for: each one either acknowledged (after its commit) or refused and counted."""
    acked_before = len(mcu.acked)
    for button in buttons:
        mcu.press(button)

    def refused() -> int:
        return int(card.status()["disk"]["refused"])

    assert wait_for(lambda: refused() + len(mcu.acked) - acked_before == len(buttons), WAIT, interval=0.5), (
        card.status()["disk"],
        len(mcu.acked) - acked_before,
    )
    assert refused() > 0, "the card was not full after all"
    return refused()


def daemon_on_full_disk(card: Card) -> list[dict[str, Any]]:
    """What ``edge doctor`` says of the running daemon on a full disk (its ``state.disk`` lines that
    name the daemon)."""
    doctor = json.loads(card.edge("doctor", "--quick", "--json").stdout)
    return [c for c in doctor["checks"] if c["check"] == "state.disk" and c["detail"].startswith("the daemon (pid")]


def test_a_full_card_keeps_every_acknowledged_rating_and_recovers(
    card: Card, broker: MosquittoBroker, collector: CollectorHandle
) -> None:
    broker.kill()  # the commune link is down while the card fills: the backlog stays on the card
    with SerialMcu(link=card.env["EDGE_PANEL__PORT"]) as mcu:
        daemon = card.start_daemon()
        epoch = card.status()["store"]["epoch"]

        # A morning of ratings, each acknowledged after its commit.
        for button in (1, 2, 3, 4, 1, 2):
            mcu.press(button)
        assert mcu.wait_acked(6, WAIT)

        # The card fills up. Presses go on; the citizens get no thank-you and the MCU keeps them.
        filler = card.filler()
        assert filler.full.wait(WAIT)
        refused = press_while_full(mcu, card, (4, 3, 2, 1, 4, 3))
        assert mcu.unacked == refused

        # Reported: by edge status (text and JSON) and in the daemon's log, with what to do.
        status = card.status()
        assert status["disk"]["full"] is True and status["disk"]["since"]
        assert status["disk"]["fix"].startswith("free space on that disk")
        text = card.edge("status").stdout
        assert f"disk        FULL since {status['disk']['since']}" in text
        assert f"{refused} event(s) refused and not acknowledged" in text
        assert "            fix: free space on that disk" in text
        [said] = daemon_on_full_disk(card)  # and edge doctor, which finds the daemon up and petting
        assert said["status"] == "fail" and said["fix"].startswith("free space on that disk")
        assert f"refuses new events since {status['disk']['since']}: the disk is full" in said["detail"]
        log = card.log.read_text()
        assert log.count(f"the disk holding {card.state_dir} is full") == 1  # once, not at every refusal
        # The panel says it once too, with the reason; the MCU's repeats are only counted.
        assert log.count("panel: press on button") == 1 and "on_press failed" not in log, log[-3000:]
        # A technician's edge emit is refused with the reason, and prints no id. (Refused as it
        # opens the store, which writes a little, or at the append: whichever first finds no room.)
        emitted = card.edge("emit", "rating", "--data", '{"score": 4}')
        assert (emitted.returncode, emitted.stdout) == (1, "")
        opening = re.escape(f"cannot open the event store {card.state_dir / 'events.db'}: ")
        refusal = rf"edge emit: ({opening})?disk full, nothing was written \([^)]+\): free space on the disk holding "
        assert re.fullmatch(refusal + re.escape(str(card.state_dir)), emitted.stderr.rstrip("\n")), emitted.stderr

        # The link comes back while the card is still full: the backlog goes out all the same, and
        # the collector's acknowledgements, which cannot be written down, do not stop the daemon.
        broker.start()
        collector.start()
        acked_so_far = {key_of(p) for p in mcu.acked}
        ids = rating_ids(card)
        assert acked_so_far <= set(ids)
        wanted = {ids[k] for k in acked_so_far}
        assert wait_for(lambda: wanted <= stored_ratings(collector), WAIT), card.log.read_text()[-3000:]
        assert wait_for(lambda: "acknowledgements are kept in memory" in card.log.read_text(), WAIT)
        # edge status tells the link as it is, though the store cannot record it.
        assert card.status()["link"]["state"] == "up"
        assert daemon.running

        # Space returns, no restart: the MCU's presses are committed and acknowledged at its next
        # repeat, and the late acknowledgements are recorded, so nothing is left pending.
        filler.remove()
        assert wait_for(lambda: mcu.unacked == 0, WAIT), card.status()["disk"]
        assert wait_for(lambda: card.status()["queue"]["depth"] == 0, WAIT), card.status()["queue"]
        status = card.status()
        assert status["disk"]["full"] is False
        assert status["disk"]["refused_total"] == refused == status["counters"]["refused_disk_full"]
        assert f"disk        {refused} event(s) refused while the disk was full" in card.edge("status").stdout
        assert daemon_on_full_disk(card) == []
        log = card.log.read_text()
        assert "has room again" in log
        assert "presses are taken again; " in log and "were refused while the disk was full" in log
        assert daemon.running

        # Full again, and the daemon is killed -9 in the middle of it.
        filler = card.filler()
        assert filler.full.wait(WAIT)
        refused_again = press_while_full(mcu, card, (2, 2, 3))
        daemon.kill()
        acked_at_kill = {key_of(p) for p in mcu.acked}

        # Space returns, then the daemon is started again.
        filler.remove()
        daemon = card.start_daemon()
        assert wait_for(lambda: mcu.unacked == 0, WAIT), card.status()["disk"]
        status = card.status()
        assert status["store"]["epoch"] == epoch  # the same store, not a new one
        assert not [p.name for p in card.seen(card.state_dir).iterdir() if ".corrupt-" in p.name]
        assert card.read_store()["integrity"] == "ok"
        # What the killed daemon refused is counted by the one that came after it.
        assert status["disk"]["refused_total"] == refused + refused_again
        assert "stopped while the disk holding" in card.log.read_text()

        # Every acknowledged press is a rating on the device, and reaches the collector exactly once.
        acked = [key_of(p) for p in mcu.acked]
        assert len(acked) == len(set(acked)) == 6 + 6 + 3
        ids = rating_ids(card)
        assert set(acked) <= set(ids) and acked_at_kill <= set(acked)
        wanted = {ids[k] for k in acked}
        assert wait_for(lambda: stored_ratings(collector) == wanted, WAIT), (
            len(wanted - stored_ratings(collector)),
            len(stored_ratings(collector) - wanted),
        )
        assert collector_rows(collector.db, "SELECT id FROM events GROUP BY id HAVING COUNT(*) > 1") == []
        verified = run_edge(["verify", "--db", str(collector.db)], check=False)
        assert verified.returncode == 0, verified.stdout  # refused presses left no hole in the chain
        assert daemon.running


def stored_ratings(collector: CollectorHandle) -> set[str]:
    return {r[0] for r in collector_rows(collector.db, "SELECT id FROM events WHERE type = 'rating'")}


def test_a_daemon_started_on_a_full_card_waits_for_room_and_starts_by_itself(
    card: Card, collector: CollectorHandle, notify_socket: NotifySocket
) -> None:
    """Issue 11, follow-up: ``edge run`` started on a full card used to exit 1, and systemd gave up
    after ten starts, leaving the device dead once space returned."""
    collector.start()
    with SerialMcu(link=card.env["EDGE_PANEL__PORT"]) as mcu:
        # A store with a rating in it, and a clean stop: SQLite folds its WAL into the database and
        # deletes it and the -shm file, which the next start has to make again.
        daemon = card.start_daemon()
        mcu.press(1)
        assert mcu.wait_acked(1, WAIT)
        daemon.stop()
        assert not card.seen(card.state_dir / "events.db-shm").exists()

        # The card fills while the device is off. The filler takes any block that comes free, so
        # nothing is spare: not the 32 KiB of a -shm file, not one WAL frame.
        filler = card.filler()
        assert filler.full.wait(WAIT)

        # Started under systemd on the full card (a 2 s watchdog), it stays up and says why.
        card.env.update(notify_socket.env(watchdog_usec=2_000_000))
        daemon = card.start_daemon()
        assert daemon.proc is not None
        pid = daemon.proc.pid
        assert wait_for(lambda: card.status()["disk"]["waiting"], WAIT), card.log.read_text()[-3000:]
        status = card.status()
        assert status["daemon"] == {"running": True, "pid": pid}
        assert status["disk"]["full"] is True and status["disk"]["since"]
        assert status["disk"]["waiting"].startswith(f"cannot open the event store {card.state_dir / 'events.db'}")
        assert "disk full" in status["disk"]["waiting"]
        assert status["queue"] is None and "disk full" in status["store"]["error"]  # SQLite cannot read it either
        assert status["link"]["state"] == "not started"
        text = card.edge("status").stdout
        assert f"disk        FULL since {status['disk']['since']}" in text
        assert "the daemon waits for room to open the event store" in text
        assert "            fix: free space on that disk" in text
        # The technician's edge doctor says the same: the daemon is up, and what it waits for.
        said = daemon_on_full_disk(card)
        assert [c["status"] for c in said] == ["fail"] and f"(pid {pid})" in said[0]["detail"]
        assert f"has waited since {status['disk']['since']} for room to open its event store" in said[0]["detail"]
        assert "disk full" in said[0]["detail"] and said[0]["fix"].startswith("free space on that disk")

        # To systemd it is up (READY=1), with a STATUS line saying what it waits for; the
        # watchdog is petted while it waits, over several of its periods.
        assert wait_for(lambda: notify_socket.with_key("READY"), WAIT)
        ready_at, ready = notify_socket.with_key("READY")[0]
        assert ready["STATUS"].startswith("waiting for room on the disk: cannot open the event store")
        assert wait_for(lambda: notify_socket.pets(since=ready_at) >= 5, WAIT), notify_socket.messages

        # A citizen presses meanwhile: nothing can commit the rating, so nothing acknowledges it,
        # and the MCU keeps it. The wait is logged once, not at every try.
        repeats = mcu.stats.repeats
        mcu.press(2)
        assert wait_for(lambda: mcu.stats.repeats >= repeats + 3, WAIT)  # sent and repeated: nobody took it
        assert mcu.unacked == 1
        assert daemon.running
        log = card.log.read_text()
        assert log.count("waiting for room") == 1, log[-3000:]
        assert "Traceback" not in log

        # Space returns: the same process opens the store, starts in full, and takes the press the
        # MCU kept at its next repeat; the rating reaches the collector.
        filler.remove()
        assert wait_for(lambda: mcu.unacked == 0, WAIT), card.log.read_text()[-3000:]
        assert daemon.running and card.status()["daemon"]["pid"] == pid
        ids = rating_ids(card)
        wanted = {ids[key_of(p)] for p in mcu.acked}
        assert len(wanted) == 2
        assert wait_for(lambda: wanted <= stored_ratings(collector), WAIT), card.log.read_text()[-3000:]
        assert wait_for(lambda: card.status()["link"]["state"] == "up", WAIT)
        status = card.status()
        assert status["disk"]["full"] is False and status["disk"]["waiting"] is None
        assert notify_socket.statuses()[-1] == "running: device counter-01"
        assert "has room again: the event store is open" in card.log.read_text()
        assert daemon.running


#: A device's uplink on a card that fills after its events were sent, in a child process that
#: mounts the card (a 1 MiB tmpfs) privately. The collector's answers come over the real broker: the
#: uplink's own link publishes them to the device's evtack topic.
UPLINK_ON_A_FULL_CARD = r"""
import json, os, sys, time
from pathlib import Path
from edge.config import BrokerAddress, SyncConfig
from edge.store import Outbox
from edge.sync import LinkSettings, MqttLink, Uplink
from edge.sync.undeliverable import undeliverable
from edge.topics import Topics

def until(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)

card, url = Path(sys.argv[1]), sys.argv[2]
topics = Topics("vn", "gia-ray", "counter-01")
outbox = Outbox(card / "state" / "events.db")
for score in (4, 1, 3):
    outbox.append("rating", {"score": score})
link = MqttLink(LinkSettings(address=BrokerAddress.parse(url), client_id="counter-01", reconnect_min_s=0.1))
uplink = Uplink(outbox, link, topics, SyncConfig(ack_timeout_s=60))
uplink.start()
link.start()
assert link.wait_connected(30)
until(lambda: uplink.stats.events_sent >= 3)

with open(card / "ballast", "ab", buffering=0) as f:
    for size in (65536, 4096, 1):
        while True:
            try:
                f.write(b"\0" * size)
            except OSError:
                break

# The collector's answers, while the card is full: one that is not JSON (counted as rejected), then
# seq 1 stored and seq 2 refused for ever (set aside, with its reason).
link.publish(topics.evtack, b"{not json", qos=1).result(10)
ack = {"v": 1, "epoch": outbox.epoch, "ranges": [[1, 1]], "rejected": [[2, 2]], "reason": "schema",
       "detail": "events.0.data.score"}
link.publish(topics.evtack, json.dumps(ack).encode(), qos=1).result(10)
until(lambda: uplink.stats.evtacks >= 1)
handled = time.monotonic()
until(lambda: uplink.heartbeat.at > handled + 0.1 or not uplink.alive())  # a round after the answers
out = {"alive_while_full": uplink.alive(), "pending_while_full": [e.seq for e in outbox.pending()]}

os.unlink(card / "ballast")
outbox.append("test", {"n": 1})  # the first commit with room writes what was held, after answering
until(lambda: outbox.counters().get("undeliverable_collector"))
out["pending_after"] = [e.seq for e in outbox.pending()]
out["undeliverable"] = [[u["seq"], u["source"], u["reason"]] for u in undeliverable(outbox)]
out["counters"] = outbox.counters()
out["alive"] = uplink.alive()
uplink.stop()
link.stop()
outbox.close()
print(json.dumps(out))
"""


def test_the_collectors_answers_on_a_full_card_wait_in_memory_and_the_uplink_goes_on(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    """Setting an event aside and counting a bad evtack need room too; on a full card they used to
    raise out of the uplink's thread, and the daemon exited."""
    card = tmp_path / "card"
    card.mkdir()
    mount = private_mount(f"mount -t tmpfs -o size=1m tmpfs {card}")
    result = run_child(tmp_path, UPLINK_ON_A_FULL_CARD, [str(card), broker.url], mount)
    # Nothing could be written: every event is still pending, and the uplink still runs.
    assert result["alive_while_full"] is True
    assert result["pending_while_full"] == [1, 2, 3]
    # Once there is room: seq 1 acknowledged, seq 2 set aside with the collector's reason, both counted.
    assert result["pending_after"] == [3, 4]
    assert result["undeliverable"] == [[2, "collector", "schema: events.0.data.score"]]
    assert result["counters"]["evtack_rejected_malformed"] == 1
    assert result["counters"]["undeliverable_collector"] == 1
    assert result["alive"] is True
