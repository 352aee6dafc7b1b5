"""``edge run``: the device daemon, wiring the outbox, the MQTT link and the services together."""

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
from edge.exceptions import ConfigError, LinkError
from edge.health import health_data
from edge.keys import load_trusted_keys
from edge.services import LIVE_KEYS, Service, ServiceContext, build_services
from edge.store import Outbox
from edge.store.journal import CommandJournal
from edge.sync import LinkSettings, MqttLink, Uplink, Will
from edge.sync.replies import ReplySender
from edge.sync.uplink import status_payload
from edge.topics import Topics

log = logging.getLogger(__name__)

HOUSEKEEPING_INTERVAL_S = 60.0


def next_boot(state_dir: Path) -> int:
    """Count this start in ``state_dir/boot`` (written atomically) and return the new count."""
    path = state_dir / "boot"
    try:
        boot = int(path.read_text().strip()) + 1
    except (OSError, ValueError):
        boot = 1
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        f.write(f"{boot}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return boot


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
    ``cfg/desired`` overlay is applied to; by default, ``config`` itself.
    """

    def __init__(self, config: EdgeConfig, base: Mapping[str, Any] | None = None) -> None:
        self.config = config
        #: Set when a configuration change needs a restart; ``next_config`` is what to start with.
        self.restart_requested = threading.Event()
        self.next_config: EdgeConfig | None = None
        self.topics = Topics(config.mqtt.root, config.device.commune, config.device.id)
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        config.store.state_dir.mkdir(parents=True, exist_ok=True)
        self.outbox = Outbox.from_config(config, owner=True)
        self.boot = next_boot(config.store.state_dir)
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

    def _status(self, online: bool) -> bytes:
        return status_payload(online, self.boot, __version__, list(self.config.device.roles), now_iso())

    def _on_connect(self) -> None:
        self.link.publish(self.topics.status, self._status(online=True), qos=1, retain=True)
        self._record_link("up")

    def _on_oversized(self, topic: str, size: int) -> None:
        self.outbox.bump("rejected_oversized")
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
        self.outbox.keep_acked_s = new.store.keep_acked_s
        self.uplink.settings = new.sync
        for service in self.services:
            service.reconfigure(new)

    def _on_disconnect(self) -> None:
        self._record_link("down")

    def _record_link(self, state: str) -> None:
        with contextlib.suppress(Exception):
            self.outbox.set_meta("link", f"{state} {now_iso()}")

    def _every(self, interval: Callable[[], float], fn: Callable[[], Any], name: str, first: float = 0.0) -> None:
        def loop() -> None:
            if self._stop.wait(first):
                return
            while True:
                try:
                    fn()
                except Exception:
                    log.exception("%s failed", name)
                ran = time.monotonic()
                # The interval is read again every few seconds, so a live change applies promptly.
                while (left := ran + interval() - time.monotonic()) > 0:
                    if self._stop.wait(min(left, 5.0)):
                        return

        t = threading.Thread(target=loop, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def report_health(self) -> None:
        self.outbox.append(
            "health",
            health_data(
                self.outbox,
                self.started,
                {
                    "boot": self.boot,
                    "link": {"connected": self.link.connected.is_set(), **_link_counts(self.link)},
                    "inflight": self.uplink.inflight,
                },
            ),
        )

    def housekeeping(self) -> None:
        self.outbox.housekeeping()
        self.journal.purge()

    def start(self) -> Daemon:
        self.outbox.set_meta("daemon", f"{os.getpid()} {now_iso()} {self.boot}")
        self._record_link("down")
        wake = self.outbox.bind_wake_socket()
        self.uplink.start(wake)
        self.replies.start()
        self.channel.start()
        for service in self.services:
            service.start()
        self.link.start()
        self._every(lambda: self.config.health.interval_s, self.report_health, "health")
        self._every(lambda: HOUSEKEEPING_INTERVAL_S, self.housekeeping, "housekeeping", first=HOUSEKEEPING_INTERVAL_S)
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
        if self.link.connected.is_set():
            with contextlib.suppress(LinkError, TimeoutError, Exception):
                self.link.publish(self.topics.status, self._status(online=False), retain=True).result(2.0)
        self.channel.stop()
        for service in reversed(self.services):
            try:
                service.stop()
            except Exception:
                log.exception("stopping %s failed", type(service).__name__)
        self.replies.stop()
        self.uplink.stop()
        self.link.stop()
        for t in self._threads:
            t.join(2)
        with contextlib.suppress(Exception):
            self.outbox.set_meta("link", f"stopped {now_iso()}")
        self.outbox.close()
        log.info("stopped")

    def run(self) -> int:
        """Run until SIGTERM or SIGINT, restarting in-process when a configuration change needs it."""
        signalled = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: signalled.set())
        daemon: Daemon = self
        while True:
            daemon.start()
            try:
                while not signalled.is_set() and not daemon.restart_requested.is_set():
                    signalled.wait(0.5)
            finally:
                daemon.stop()
            if signalled.is_set() or daemon.next_config is None:
                return 0
            log.info("restarting with the new configuration")
            daemon = Daemon(daemon.next_config, daemon.desired.base)


def _link_counts(link: MqttLink) -> dict[str, int]:
    s = link.stats
    return {"connects": s.connects, "disconnects": s.disconnects, "oversized_dropped": s.oversized_dropped}
