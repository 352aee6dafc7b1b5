"""``edge run``: the device daemon, wiring the outbox, the MQTT link and the services together."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from drivers.resources import process_resources
from edge import __version__
from edge.clock import now_iso
from edge.commands.registry import CommandRegistry
from edge.config import EdgeConfig, resolve_secret_path
from edge.exceptions import ConfigError, LinkError
from edge.health import health_data
from edge.services import Service, ServiceContext, build_services
from edge.store import Outbox
from edge.sync import LinkSettings, MqttLink, Uplink, Will
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
    """One device: ``start()``, then ``stop()`` (or ``run()`` until SIGTERM/SIGINT)."""

    def __init__(self, config: EdgeConfig) -> None:
        self.config = config
        self.topics = Topics(config.mqtt.root, config.device.commune, config.device.id)
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        config.store.state_dir.mkdir(parents=True, exist_ok=True)
        self.outbox = Outbox(config.db_path, max_bytes=config.store.max_bytes, keep_acked_s=config.store.keep_acked_s)
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
        self.link.on_oversized = lambda topic, size: self.outbox.bump("rejected_oversized")
        self.registry = CommandRegistry()
        self.services: list[Service] = build_services(
            ServiceContext(config, self.outbox, self.registry, process_resources())
        )

    def _status(self, online: bool) -> bytes:
        return status_payload(online, self.boot, __version__, list(self.config.device.roles), now_iso())

    def _on_connect(self) -> None:
        self.link.publish(self.topics.status, self._status(online=True), qos=1, retain=True)
        self._record_link("up")

    def _on_disconnect(self) -> None:
        self._record_link("down")

    def _record_link(self, state: str) -> None:
        with contextlib.suppress(Exception):
            self.outbox.set_meta("link", f"{state} {now_iso()}")

    def _every(self, interval: float, fn: Callable[[], Any], name: str, first: float = 0.0) -> None:
        def loop() -> None:
            if self._stop.wait(first):
                return
            while True:
                try:
                    fn()
                except Exception:
                    log.exception("%s failed", name)
                if self._stop.wait(interval):
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

    def start(self) -> Daemon:
        self.outbox.set_meta("daemon", f"{os.getpid()} {now_iso()} {self.boot}")
        self._record_link("down")
        wake = self.outbox.bind_wake_socket()
        self.uplink.start(wake)
        for service in self.services:
            service.start()
        self.link.start()
        self._every(self.config.health.interval_s, self.report_health, "health")
        self._every(HOUSEKEEPING_INTERVAL_S, self.outbox.housekeeping, "housekeeping", first=HOUSEKEEPING_INTERVAL_S)
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
        for service in reversed(self.services):
            try:
                service.stop()
            except Exception:
                log.exception("stopping %s failed", type(service).__name__)
        self.uplink.stop()
        self.link.stop()
        for t in self._threads:
            t.join(2)
        with contextlib.suppress(Exception):
            self.outbox.set_meta("link", f"stopped {now_iso()}")
        self.outbox.close()
        log.info("stopped")

    def run(self) -> int:
        """Run until SIGTERM or SIGINT."""
        signalled = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: signalled.set())
        self.start()
        try:
            while not signalled.wait(3600):
                pass
        finally:
            self.stop()
        return 0


def _link_counts(link: MqttLink) -> dict[str, int]:
    s = link.stats
    return {"connects": s.connects, "disconnects": s.disconnects, "oversized_dropped": s.oversized_dropped}
