"""sd_notify, the watchdog and the journal handler, against sockets bound by the test as systemd binds them.

The daemon runs as ``edge run`` with ``$NOTIFY_SOCKET`` and ``$WATCHDOG_USEC`` set, exactly as under
``Type=notify`` with ``WatchdogSec=``; the test reads the datagrams systemd would read.
"""

from __future__ import annotations

import array
import logging
import os
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from edge.config import load_config
from edge.daemon import Daemon
from edge.systemd import (
    DaemonWatchdog,
    JournalHandler,
    Notifier,
    Watchdog,
    encode_journal_fields,
    journal_stream_is_stderr,
    watchdog_period,
)
from sim.broker import MosquittoBroker, free_port
from sim.harness import EdgeProcess, wait_for, write_device_config
from tests.conftest import FAST_SYNC

if TYPE_CHECKING:
    from tests.systemd_fixtures import NotifySocket, SilentBroker

pytest_plugins = ["tests.systemd_fixtures"]


# -- sd_notify --------------------------------------------------------------------------------------


def test_notifications_reach_the_socket_and_nothing_happens_without_one(notify_socket: NotifySocket) -> None:
    n = Notifier(env={"NOTIFY_SOCKET": str(notify_socket.path)})
    assert n.enabled
    assert n.ready("running: device counter-01")
    assert n.status("line one\nline two")  # a newline would start a new assignment: kept on one line
    assert n.stopping()
    assert wait_for(lambda: len(notify_socket.messages) == 3, 10)
    assert notify_socket.messages[0][1] == {"READY": "1", "STATUS": "running: device counter-01"}
    assert notify_socket.messages[1][1] == {"STATUS": "line one line two"}
    assert notify_socket.messages[2][1] == {"STOPPING": "1"}
    n.close()

    outside = Notifier(env={})
    assert not outside.enabled and not outside.ready() and not outside.watchdog()


def test_an_abstract_notify_socket(tmp_path: Path) -> None:
    name = f"commune-edge-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(10)
    try:
        assert Notifier(env={"NOTIFY_SOCKET": "@" + name}).watchdog()
        assert sock.recv(100) == b"WATCHDOG=1\n"
    finally:
        sock.close()


def test_the_watchdog_period_is_for_this_process_only() -> None:
    assert watchdog_period({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert watchdog_period({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) == 30.0
    assert watchdog_period({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None  # meant for another
    assert watchdog_period({}) is None and watchdog_period({"WATCHDOG_USEC": "x"}) is None


def test_the_watchdog_pets_only_while_the_predicate_holds(notify_socket: NotifySocket) -> None:
    healthy = threading.Event()
    healthy.set()

    def alive() -> bool | str:
        return True if healthy.is_set() else "the uplink is stuck"

    with Watchdog(alive, Notifier(str(notify_socket.path)), period_s=0.4) as wd:
        assert wait_for(lambda: notify_socket.pets() >= 3, 20)
        healthy.clear()
        assert wait_for(lambda: wd.reason == "the uplink is stuck", 20)
        stopped = time.monotonic() + 0.3  # a pet already on its way may still arrive
        time.sleep(1.5)
        assert notify_socket.pets(since=stopped) == 0
        statuses = [m["STATUS"] for _, m in notify_socket.with_key("STATUS")]
        assert "unhealthy: the uplink is stuck" in statuses
        healthy.set()
        resumed = time.monotonic()
        assert wait_for(lambda: notify_socket.pets(since=resumed) >= 2, 20)
    # A predicate that raises counts as a failure, never as healthy.
    broken = Watchdog(lambda: 1 / 0 == 0, Notifier(str(notify_socket.path)), period_s=1.0)
    assert not broken.check() and "ZeroDivisionError" in broken.reason


# -- the daemon under a watchdog -----------------------------------------------------------------------


def start_daemon(tmp_path: Path, broker_url: str, notify: NotifySocket) -> EdgeProcess:
    config = write_device_config(tmp_path / "edge.toml", broker_url, state_dir=tmp_path / "state")
    env = {"EDGE_CONFIG": str(config), **FAST_SYNC, **notify.env(1_000_000)}
    # A counter without a panel: the watchdog is about the daemon's loops, not the hardware.
    config.write_text(config.read_text().replace("[panel]", "[unused_panel]").split("[unused_panel]")[0])
    return EdgeProcess(["run"], tmp_path / "daemon.log", env).start()


def test_ready_then_petting_while_the_broker_is_simply_down_then_stopping(
    tmp_path: Path, notify_socket: NotifySocket
) -> None:
    daemon = start_daemon(tmp_path, f"mqtt://127.0.0.1:{free_port()}", notify_socket)
    try:
        assert wait_for(lambda: notify_socket.with_key("READY"), 60), (tmp_path / "daemon.log").read_text()
        ready = notify_socket.with_key("READY")[0][1]
        assert ready["STATUS"] == "running: device counter-01"
        # Offline is healthy: the events wait in the store, a restart would not bring the broker back.
        since = time.monotonic()
        assert wait_for(lambda: notify_socket.pets(since) >= 8, 60)
    finally:
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.proc.wait(60) == 0
        daemon.stop()
    assert notify_socket.with_key("STOPPING")


def test_a_broker_that_accepts_and_never_answers_does_not_stop_the_petting(
    tmp_path: Path, notify_socket: NotifySocket, silent_broker: SilentBroker
) -> None:
    """The link gives up on a silent broker by itself (paho bounds the TLS handshake, the keepalive
    bounds the wait for CONNACK) and tries again: the device is offline, not hung."""
    daemon = start_daemon(tmp_path, silent_broker.url, notify_socket)
    try:
        assert wait_for(lambda: silent_broker.accepted and notify_socket.with_key("READY"), 60)
        since = time.monotonic()
        assert wait_for(lambda: notify_socket.pets(since) >= 10, 60)
        assert not [m for _, m in notify_socket.messages if m.get("STATUS", "").startswith("unhealthy")]
    finally:
        daemon.stop()


@pytest.fixture
def in_process_daemon(tmp_path: Path, broker: MosquittoBroker) -> Iterator[Daemon]:
    config_path = write_device_config(tmp_path / "edge.toml", broker.url, state_dir=tmp_path / "state")
    config_path.write_text(config_path.read_text().split("[panel]")[0])
    os.environ.update(FAST_SYNC)
    try:
        config = load_config(config_path)
    finally:
        for key in FAST_SYNC:
            os.environ.pop(key, None)
    daemon = Daemon(config).start()
    try:
        yield daemon
    finally:
        daemon.stop()


def test_petting_stops_when_a_loop_dies(in_process_daemon: Daemon, notify_socket: NotifySocket) -> None:
    daemon = in_process_daemon
    systemd = DaemonWatchdog(Notifier(str(notify_socket.path)), period_s=1.0)
    systemd.serving(daemon.supervisor, daemon.config.device.id)
    try:
        assert wait_for(lambda: notify_socket.pets() >= 3, 30)
        daemon.uplink.stop()  # the uplink's thread ends: the sync loop is gone while the process lives
        assert wait_for(lambda: systemd.watchdog.reason.startswith("uplink thread died"), 30)
        stopped = time.monotonic() + 0.6
        time.sleep(2.5)
        assert notify_socket.pets(since=stopped) == 0
    finally:
        systemd.stopping()


def test_petting_stops_while_the_store_is_stuck_and_resumes_after(
    in_process_daemon: Daemon, broker: MosquittoBroker, notify_socket: NotifySocket
) -> None:
    """The supervisor records the link state in the store; with the database locked by another
    process (a stalled disk looks the same) its round does not finish, and that is a hang."""
    daemon = in_process_daemon
    assert daemon.link.wait_connected(30)
    systemd = DaemonWatchdog(Notifier(str(notify_socket.path)), period_s=1.0)
    systemd.serving(daemon.supervisor, daemon.config.device.id)
    assert wait_for(lambda: notify_socket.pets() >= 2, 30)
    blocker = sqlite3.connect(daemon.config.db_path, timeout=30, isolation_level=None)
    try:
        blocker.execute("BEGIN EXCLUSIVE")
        broker.kill()  # the link goes down: the supervisor's chore writes that, and waits for the lock
        assert wait_for(lambda: "has not finished a round" in systemd.watchdog.reason, 60)
        stuck = time.monotonic() + 0.6
        time.sleep(1.5)
        assert notify_socket.pets(since=stuck) == 0
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    released = time.monotonic()
    assert wait_for(lambda: notify_socket.pets(since=released) >= 2, 90)
    assert systemd.watchdog.reason == ""
    systemd.stopping()


# -- journald ---------------------------------------------------------------------------------------


def parse_journal(data: bytes) -> dict[str, str]:
    """journald's native format, as journald reads it."""
    fields: dict[str, str] = {}
    i = 0
    while i < len(data):
        end = data.index(b"\n", i)
        line = data[i:end]
        if b"=" in line:
            name, value = line.split(b"=", 1)
            fields[name.decode()] = value.decode()
            i = end + 1
        else:
            (size,) = struct.unpack("<Q", data[end + 1 : end + 9])
            fields[line.decode()] = data[end + 9 : end + 9 + size].decode()
            i = end + 9 + size + 1
    return fields


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[tuple[socket.socket, JournalHandler]]:
    path = tmp_path / "journal.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(10)
    handler = JournalHandler(path)
    yield sock, handler
    handler.close()
    sock.close()


def receive(sock: socket.socket) -> dict[str, str]:
    fds = array.array("i")
    data, ancdata, _flags, _addr = sock.recvmsg(1 << 20, socket.CMSG_SPACE(fds.itemsize))
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - (len(payload) % fds.itemsize)])
    if fds:
        with os.fdopen(fds[0], "rb") as f:
            f.seek(0)  # the sender's offset: it wrote there (journald maps the file instead)
            data = f.read()
    return parse_journal(data)


def test_journal_entries_carry_the_device_event_type_and_command_id(
    journal: tuple[socket.socket, JournalHandler],
) -> None:
    sock, handler = journal
    handler.context.device = "counter-01"
    log = logging.getLogger("edge.commands.channel")
    level, log.level = log.level, logging.INFO
    log.addHandler(handler)
    log.propagate = False
    try:
        cmd_id = "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"
        log.warning("command %s %s failed", "broadcast.play", cmd_id)
        entry = receive(sock)
        assert entry["MESSAGE"] == f"command broadcast.play {cmd_id} failed"
        assert entry["PRIORITY"] == "4" and entry["SYSLOG_IDENTIFIER"] == "commune-edge"
        assert entry["EDGE_DEVICE"] == "counter-01" and entry["EDGE_CMD_ID"] == cmd_id
        assert entry["LOGGER"] == "edge.commands.channel" and entry["CODE_FUNC"]

        log.info("stored", extra={"event_type": "rating", "cmd_id": "c-1", "device": "counter-02"})
        entry = receive(sock)
        assert (entry["EDGE_EVENT_TYPE"], entry["EDGE_CMD_ID"], entry["EDGE_DEVICE"]) == ("rating", "c-1", "counter-02")

        try:
            raise ValueError("bad frame")
        except ValueError:
            log.exception("panel failed")
        entry = receive(sock)  # a traceback: a value with newlines, length-prefixed
        assert entry["MESSAGE"].startswith("panel failed\nTraceback") and "ValueError: bad frame" in entry["MESSAGE"]
        assert entry["PRIORITY"] == "3"

        big = "x" * 400_000  # over a datagram's limit: passed in a sealed memfd
        log.error("%s", big)
        assert receive(sock)["MESSAGE"] == big
    finally:
        log.removeHandler(handler)
        log.propagate = True
        log.level = level


def test_field_names_are_checked() -> None:
    assert encode_journal_fields({"MESSAGE": "a"}) == b"MESSAGE=a\n"
    with pytest.raises(ValueError):
        encode_journal_fields({"message": "a"})


def test_the_journal_is_used_only_when_stderr_is_the_journal_stream(tmp_path: Path) -> None:
    err = tmp_path / "stderr"
    code = "import sys; from edge.systemd import journal_stream_is_stderr as j; sys.stdout.write(str(j()))"
    with open(err, "w") as f:
        st = os.fstat(f.fileno())
        env = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        same = subprocess.run(
            [sys.executable, "-c", code], stderr=f, env=env, capture_output=False, stdout=subprocess.PIPE
        )
        other = subprocess.run([sys.executable, "-c", code], stderr=subprocess.DEVNULL, env=env, stdout=subprocess.PIPE)
    assert same.stdout == b"True" and other.stdout == b"False"
    assert not journal_stream_is_stderr({}) and not journal_stream_is_stderr({"JOURNAL_STREAM": "x"})
