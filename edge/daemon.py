"""``edge run``: the device daemon, wiring the outbox, the MQTT link and the services together.

A :class:`~edge.supervisor.Supervisor` watches every loop the device stands on (the outbox writer,
the MQTT link, the uplink, the reply sender, the command channel, the periodic loops, and each
service's threads); if one dies, ``edge run`` logs "<name> thread died: <exception>", stops what it can
and exits 1, and systemd starts it again. The link and the uplink must also keep making rounds: one
that does not for :data:`~edge.supervisor.HUNG_AFTER_S` is hung ("mqtt-link hung: ..."), with the same
outcome. It also does the daemon's small bookkeeping that must stay off the network thread
(recording the link state and the oversized-message count in the store).

A daemon started on a full disk does not exit (systemd would give up after ten starts, and the
device stay dead once space returns): :func:`serve` waits for room to open the store
(:func:`edge.store.opening.open_when_room`), with ``READY=1`` and a ``STATUS=`` line that says so and
the watchdog petted while the wait makes its rounds, then starts in full without a restart.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from drivers.resources import process_resources
from edge import __version__
from edge.clock import now_iso
from edge.commands.builtin import register_builtin
from edge.commands.channel import CommandChannel
from edge.commands.desired import DesiredConfig, is_live
from edge.commands.registry import CommandRegistry
from edge.config import EdgeConfig, resolve_secret_path
from edge.exceptions import ConfigError, LinkError, StoreFull
from edge.health import health_data
from edge.keys import load_trusted_keys
from edge.services import LIVE_KEYS, Service, ServiceContext, build_services
from edge.store import Outbox, max_event_bytes_for
from edge.store.journal import CommandJournal
from edge.store.opening import open_when_room
from edge.supervisor import Heartbeat, Supervisor
from edge.sync import LinkSettings, MqttLink, Uplink, Will
from edge.sync.replies import DRAIN_S as REPLY_DRAIN_S
from edge.sync.replies import ReplySender
from edge.sync.uplink import status_payload
from edge.systemd import DaemonWatchdog
from edge.topics import Topics

log = logging.getLogger(__name__)

HOUSEKEEPING_INTERVAL_S = 60.0
#: How long a daemon that lost one of its loops may take to stop the others before it exits anyway.
FAILED_STOP_TIMEOUT_S = 30.0
#: How often what the store holds in memory while the disk is full is tried (otherwise the next
#: commit writes it), and so how soon ``edge status`` stops saying "full" once there is room.
HELD_RETRY_S = 5.0


def next_boot(state_dir: Path) -> tuple[int, bool]:
    """Count this start in ``state_dir/boot`` (written atomically): the new count, and whether it
    was written. One that cannot be (a full disk) is still this start's: the start goes on, and
    :func:`record_boot` is tried again later."""
    path = state_dir / "boot"
    try:
        boot = int(path.read_text().strip()) + 1
    except (OSError, ValueError):
        boot = 1
    recorded = record_boot(state_dir, boot)
    if not recorded:
        log.warning("the boot count %d is not written to %s yet (the next start may count it again)", boot, path)
    return boot, recorded


def record_boot(state_dir: Path, boot: int) -> bool:
    """Write ``boot`` to ``state_dir/boot`` atomically; False (and nothing left behind) if it cannot be."""
    path = state_dir / "boot"
    tmp = path.with_suffix(".tmp")
    try:
        with open(tmp, "w") as f:
            f.write(f"{boot}\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        log.debug("writing %s failed: %s", path, exc)
        with contextlib.suppress(OSError):
            tmp.unlink()
        return False
    return True


def link_settings(config: EdgeConfig, will: Will | None) -> LinkSettings:
    """LinkSettings for this device, reading the password file if there is one."""
    m = config.mqtt
    password = None
    if m.password_file is not None:
        path = resolve_secret_path(m.password_file)
        try:
            password = path.read_text().strip()
        except OSError as exc:
            raise ConfigError([("mqtt.password_file", f"cannot read {path}: {exc.strerror}")]) from None
    key_file = resolve_secret_path(m.tls.key_file) if m.tls.key_file else None
    return LinkSettings(
        address=m.address,
        client_id=config.client_id,
        keepalive_s=m.keepalive_s,
        session_expiry_s=m.session_expiry_s,
        username=m.username,
        password=password,
        ca_file=m.tls.ca_file,
        cert_file=m.tls.cert_file,
        key_file=key_file,
        max_incoming_bytes=m.max_incoming_bytes,
        reconnect_min_s=config.sync.reconnect_min_s,
        reconnect_max_s=config.sync.reconnect_max_s,
        will=will,
    )


class Daemon:
    """One device: ``start()``, then ``stop()`` (or ``run()`` until SIGTERM/SIGINT).

    ``base`` is the local configuration data (the TOML with ``EDGE_*`` overrides) that a live
    ``cfg/desired`` overlay is applied to; by default, ``config`` itself. ``outbox`` is the device's
    store already opened by its owner (:func:`serve` waits for room to open it); by default it is
    opened here, and an error (a full disk included) is raised.
    """

    def __init__(
        self, config: EdgeConfig, base: Mapping[str, Any] | None = None, *, outbox: Outbox | None = None
    ) -> None:
        self.config = config
        #: Set when a configuration change needs a restart; ``next_config`` is what to start with.
        self.restart_requested = threading.Event()
        self.next_config: EdgeConfig | None = None
        self.topics = Topics(config.mqtt.root, config.device.commune, config.device.id)
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        # Written by the network thread, recorded in the store by the supervisor's chore.
        self._link_state = ("down", now_iso())
        self._link_state_recorded: tuple[str, str] | None = None
        self._oversized_unrecorded = 0
        self.supervisor = Supervisor()
        if outbox is None:
            config.store.state_dir.mkdir(parents=True, exist_ok=True)
            outbox = Outbox.from_config(config, owner=True)
        self.outbox = outbox
        self.boot, self._boot_recorded = next_boot(config.store.state_dir)
        self._held_tried = time.monotonic()
        will = Will(self.topics.status, self._status(online=False))
        self.link = MqttLink(link_settings(config, will))
        self.uplink = Uplink(
            self.outbox,
            self.link,
            self.topics,
            config.sync,
            max_incoming_bytes=config.mqtt.max_incoming_bytes,
        )
        self.link.on_connect(self._on_connect)
        self.link.on_disconnect(self._on_disconnect)
        self.registry = CommandRegistry()
        self.journal = CommandJournal(self.outbox)
        self.replies = ReplySender(self.journal, self.link, self.topics)
        self.desired = DesiredConfig(
            config,
            base if base is not None else config.model_dump(mode="json"),
            self.journal,
            self._apply_config,
            self.replies.wake,
        )
        self.desired.register(self.registry)
        register_builtin(self.registry, self)
        self.channel = CommandChannel(
            config.commands,
            load_trusted_keys(config.commands.trusted_keys),
            self.outbox,
            self.journal,
            self.link,
            self.topics,
            self.registry,
            self.replies,
            self.desired,
            max_bytes=config.mqtt.max_incoming_bytes,
        )
        self.link.on_oversized = self._on_oversized
        self.services: list[Service] = build_services(
            ServiceContext(config, self.outbox, self.registry, process_resources())
        )
        if config.camera:
            # evidence.upload needs the link, which services are not given: built here, run as one.
            from edge.services.camera.upload import EvidenceUploader

            cameras = {cam.name: cam.evidence for cam in config.camera}
            media = config.store.state_dir / "media"
            self.services.append(EvidenceUploader(media, cameras, self.outbox, self.link, self.topics, self.registry))
        self._watch()

    def _watch(self) -> None:
        sup = self.supervisor
        sup.watch("outbox writer", self.outbox.alive)
        sup.watch("mqtt-link", self.link.alive, lambda: self.link.failure, heartbeat=self.link.heartbeat)
        sup.watch("uplink", self.uplink.alive, lambda: self.uplink.failure, heartbeat=self.uplink.heartbeat)
        sup.watch("replies", self.replies.alive, lambda: self.replies.failure)
        # The channel's intake thread: verification, the replay check and the journal write.
        sup.watch_thread("commands", lambda: self.channel.thread)
        for service in self.services:
            sup.watch_loops(service.loops())
        sup.chore("recording the link state", self._record_link_state)

    def _status(self, online: bool) -> bytes:
        return status_payload(online, self.boot, __version__, list(self.config.device.roles), now_iso())

    def _on_connect(self) -> None:
        self.link.publish(self.topics.status, self._status(online=True), qos=1, retain=True)
        self._link_state = ("up", now_iso())
        self.supervisor.wake()  # recorded at once, on the supervisor's thread

    def _on_oversized(self, topic: str, size: int) -> None:
        self._oversized_unrecorded += 1  # network thread: counted in the store by the chore
        self.channel.on_oversized(topic, size)

    def _apply_config(self, new: EdgeConfig, changed: set[str]) -> None:
        """A new configuration was applied and persisted: take it live, or restart for it."""
        if not is_live(changed, LIVE_KEYS):
            log.info("configuration change needs a restart: %s", ", ".join(sorted(changed)))
            self.next_config = new
            self.restart_requested.set()
            return
        self.config = new
        self.outbox.max_bytes = new.store.max_bytes
        self.outbox.max_event_bytes = max_event_bytes_for(new)  # follows sync.batch_max_bytes
        self.outbox.keep_acked_s = new.store.keep_acked_s
        self.uplink.settings = new.sync
        for service in self.services:
            service.reconfigure(new)

    def _on_disconnect(self) -> None:
        self._link_state = ("down", now_iso())
        self.supervisor.wake()

    def _record_link_state(self) -> None:
        """The supervisor's chore (about once a second): the link state and the count of oversized
        messages go into the store here, not on the network thread, which must never wait for SQLite.

        The link state goes into ``daemon.lock``'s note as well, where ``edge status`` reads it even
        while the disk is full; the store's copy (and the count) then waits in memory for room.
        What the disk-full state held is tried every :data:`HELD_RETRY_S`, and the boot count."""
        state = self._link_state
        if state != self._link_state_recorded:
            self.outbox.set_note("link", {"state": state[0], "since": state[1]})
            self.outbox.set_meta("link", f"{state[0]} {state[1]}", hold_if_full=True)
            self._link_state_recorded = state
        n = self._oversized_unrecorded
        if n:
            self.outbox.bump("rejected_oversized", n)
            self._oversized_unrecorded -= n
        now = time.monotonic()
        if now - self._held_tried >= HELD_RETRY_S:
            self._held_tried = now
            self.outbox.retry_held()
            if not self._boot_recorded:
                self._boot_recorded = record_boot(self.config.store.state_dir, self.boot)

    def _every(self, interval: Callable[[], float], fn: Callable[[], Any], name: str, first: float = 0.0) -> None:
        def loop() -> None:
            if self._stop.wait(first):
                return
            full = False
            while True:
                try:
                    fn()
                except StoreFull as exc:
                    # The store has said so, once; each round it is refused again is no news.
                    if not full:
                        log.warning("%s failed, and will until there is room: %s", name, exc)
                    full = True
                except Exception:
                    log.exception("%s failed", name)
                else:
                    full = False
                ran = time.monotonic()
                # The interval is read again every few seconds, so a live change applies promptly.
                while (left := ran + interval() - time.monotonic()) > 0:
                    if self._stop.wait(min(left, 5.0)):
                        return

        t = threading.Thread(target=loop, name=name, daemon=True)
        t.start()
        self._threads.append(t)
        self.supervisor.watch_thread(name, lambda: t)

    def report_health(self) -> None:
        self.outbox.append(
            "health",
            health_data(
                self.outbox,
                self.started,
                {
                    "boot": self.boot,
                    "link": {
                        "connected": self.link.connected.is_set(),
                        "state": self._link_state[0],
                        "since": self._link_state[1],
                        **_link_counts(self.link),
                    },
                    "inflight": self.uplink.inflight,
                },
            ),
        )

    def housekeeping(self) -> None:
        self.outbox.housekeeping()
        self.journal.purge()

    def start(self) -> Daemon:
        # On a disk still nearly full this waits in memory for room; edge status finds the pid in
        # daemon.lock meanwhile.
        self.outbox.set_meta("daemon", f"{os.getpid()} {now_iso()} {self.boot}", hold_if_full=True)
        self._record_link_state()
        wake = self.outbox.bind_wake_socket()
        self.uplink.start(wake)
        self.replies.start()
        self.channel.start()
        for service in self.services:
            service.start()
        self.link.start()
        self._every(lambda: self.config.health.interval_s, self.report_health, "health")
        self._every(lambda: HOUSEKEEPING_INTERVAL_S, self.housekeeping, "housekeeping", first=HOUSEKEEPING_INTERVAL_S)
        self.supervisor.start()
        log.info(
            "device %s/%s started (boot %d, epoch %s, broker %s)",
            self.config.device.commune,
            self.config.device.id,
            self.boot,
            self.outbox.epoch,
            self.config.mqtt.address,
        )
        return self

    def stop(self) -> None:
        """Say goodbye on the status topic, then close everything in dependency order."""
        if self._stop.is_set():
            return
        self._stop.set()
        self.supervisor.stop()  # what is stopped below is meant to end
        if self.link.connected.is_set():
            with contextlib.suppress(LinkError, TimeoutError, Exception):
                self.link.publish(self.topics.status, self._status(online=False), retain=True).result(2.0)
        self.channel.stop()
        for service in reversed(self.services):
            try:
                service.stop()
            except Exception:
                log.exception("stopping %s failed", type(service).__name__)
        self.replies.stop(drain_s=REPLY_DRAIN_S)  # an outcome written just now is not sent twice
        self.uplink.stop()
        self.link.stop()
        for t in self._threads:
            t.join(2)
        stopped = now_iso()
        self.outbox.set_note("link", {"state": "stopped", "since": stopped})
        with contextlib.suppress(Exception):
            self.outbox.set_meta("link", f"stopped {stopped}")
        self.outbox.close()
        log.info("stopped")

    def wait(self, stop: threading.Event, timeout: float | None = None) -> str | None:
        """Block until ``stop`` is set ("stopped"), a configuration change needs a restart
        ("restart"), or a loop has died ("failed"); None if ``timeout`` passes first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self.supervisor.failed.is_set():
                return "failed"
            if stop.is_set():
                return "stopped"
            if self.restart_requested.is_set():
                return "restart"
            if deadline is not None and time.monotonic() >= deadline:
                return None
            stop.wait(0.5)

    def stop_after_failure(self) -> None:
        """Stop what still runs, but give up after :data:`FAILED_STOP_TIMEOUT_S`: with a loop dead,
        some part may no longer answer, and the process must end for systemd to start it again."""
        stopper = threading.Thread(target=self.stop, name="stop", daemon=True)
        stopper.start()
        stopper.join(FAILED_STOP_TIMEOUT_S)
        if stopper.is_alive():
            log.error("not everything stopped within %.0f s; exiting anyway", FAILED_STOP_TIMEOUT_S)

    def run(self) -> int:
        """Run until SIGTERM or SIGINT (0), restarting in-process when a configuration change needs it;
        1 if one of the daemon's loops died. See :func:`serve`."""
        return serve(self.config, self.desired.base, first=self)


def serve(config: EdgeConfig, base: Mapping[str, Any] | None = None, *, first: Daemon | None = None) -> int:
    """``edge run``: the device's daemon until SIGTERM or SIGINT (0), restarting in-process when a
    configuration change needs it; 1 if one of the daemon's loops died.

    Each start opens the store as soon as the disk has room for it (:func:`_when_room`), then
    builds and starts a :class:`Daemon`; ``first`` is one already built.
    """
    signalled = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: signalled.set())
    systemd = DaemonWatchdog()  # READY=1, the watchdog while the supervisor finds all alive, STOPPING=1
    daemon = first
    while True:
        waiting: Supervisor | None = None
        if daemon is None:
            daemon, waiting = _when_room(config, base, signalled, systemd)
            if daemon is None:
                if waiting is not None:
                    waiting.stop()
                systemd.stopping()
                return 0
        try:
            daemon.start()
            systemd.serving(daemon.supervisor, daemon.config.device.id)
        finally:
            if waiting is not None:
                waiting.stop()  # only now: the watchdog followed it until the daemon's own took over
        outcome = None
        try:
            outcome = daemon.wait(signalled)
        finally:
            systemd.stopping(restart=outcome == "restart")
            if outcome == "failed":
                daemon.stop_after_failure()
            else:
                daemon.stop()
        if outcome == "failed":
            log.critical("exiting: %s", daemon.supervisor.reason)
            return 1
        if signalled.is_set() or daemon.next_config is None:
            return 0
        log.info("restarting with the new configuration")
        config, base, daemon = daemon.next_config, daemon.desired.base, None


def _when_room(
    config: EdgeConfig, base: Mapping[str, Any] | None, stop: threading.Event, systemd: DaemonWatchdog
) -> tuple[Daemon | None, Supervisor | None]:
    """A :class:`Daemon` on the device's store, opened as soon as the disk has room for it (None if
    ``stop`` is set first), and the supervisor that watched the wait, if there was one.

    Waiting is reported as started: ``READY=1``, with ``STATUS=`` saying what it waits for. The
    daemon is up as far as it can be without its store (it holds the state directory, says why it
    waits in ``daemon.lock`` and the journal, and takes events as soon as it can); left "activating"
    instead, it would be killed at ``TimeoutStartSec`` and never watched. The watchdog is petted
    while the wait makes its rounds (a supervisor of its own follows it), so a wait stuck in an open
    that never returns is a hang like any other, and a wait is not.
    """
    beat = Heartbeat()
    waiting: Supervisor | None = None

    def on_waiting(reason: str) -> None:
        nonlocal waiting
        waiting = Supervisor()
        waiting.watch("event store", lambda: True, heartbeat=beat)
        waiting.start()
        systemd.serving(waiting, config.device.id, status=f"waiting for room on the disk: {reason}")

    try:
        outbox = open_when_room(config, stop, beat=lambda: beat.beat("opening the event store"), on_waiting=on_waiting)
        if outbox is None:
            return None, waiting
        try:
            return Daemon(config, base, outbox=outbox), waiting
        except BaseException:
            outbox.close()
            raise
    except BaseException:
        if waiting is not None:
            waiting.stop()
        raise


def _link_counts(link: MqttLink) -> dict[str, int]:
    s = link.stats
    return {"connects": s.connects, "disconnects": s.disconnects, "oversized_dropped": s.oversized_dropped}
