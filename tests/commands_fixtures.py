"""A device that trusts one signing key, and the commune server's side that signs and sends."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge import keys
from edge.commands.channel import CommandChannel
from edge.commands.claims import make_claims
from edge.commands.desired import DesiredConfig, load_effective_config
from edge.commands.jws import sign, unverified_claims
from edge.commands.registry import CommandRegistry
from edge.commands.runner import CommandRunner
from edge.commands.sender import CommandSender
from edge.config import BrokerAddress, CommandsConfig, EdgeConfig
from edge.store import Outbox
from edge.store.journal import CommandJournal
from edge.sync.link import LinkSettings, MqttLink
from edge.sync.replies import ReplySender
from edge.topics import Topics
from sim.broker import MosquittoBroker
from sim.harness import EdgeProcess, run_edge, wait_for, write_device_config
from tests.conftest import Device

COMMUNE = "gia-ray"
DEVICE = "counter-01"


@dataclass
class CommandedDevice:
    """A device daemon (subprocess) that trusts ``key``, and a server-side sender."""

    device: Device
    key: Ed25519PrivateKey
    kid: str
    sender: CommandSender
    daemon: EdgeProcess | None = None

    def start(self) -> CommandedDevice:
        self.daemon = self.device.daemon().start()
        assert wait_for(lambda: self.status()["link"]["state"] == "up", 20), self.log()
        return self

    def restart(self) -> None:
        assert self.daemon is not None
        self.daemon.stop()
        self.start()

    def status(self) -> dict[str, Any]:
        out = run_edge(["status", "--json"], env=self.device.env, check=False)
        return json.loads(out.stdout) if out.returncode == 0 else {"link": {"state": "?"}, "counters": {}}

    def counters(self) -> dict[str, int]:
        counters: dict[str, int] = self.status()["counters"]
        return counters

    def events(self, type_: str) -> list[dict[str, Any]]:
        with Outbox(self.device.db) as outbox:
            return [e.as_dict() for e in outbox.list_events(type=type_, limit=10_000)]

    def log(self) -> str:
        return self.device.log.read_text() if self.device.log.exists() else ""


def sender_for(broker: MosquittoBroker, client_id: str = "server-test") -> CommandSender:
    settings = LinkSettings(BrokerAddress.parse(broker.url), client_id, clean_start=True, session_expiry_s=0)
    return CommandSender(settings, root="vn", commune=COMMUNE)


@pytest.fixture
def signing_key(tmp_path: Path) -> Ed25519PrivateKey:
    return keys.generate_signing_key(tmp_path / "signing.key")


@pytest.fixture
def commanded(device: Device, broker: MosquittoBroker, signing_key: Ed25519PrivateKey) -> Iterator[CommandedDevice]:
    kid = keys.key_id(signing_key)
    device.env["EDGE_COMMANDS__TRUSTED_KEYS"] = json.dumps({kid: keys.public_key_b64(signing_key)})
    sender = sender_for(broker).start()
    handle = CommandedDevice(device, signing_key, kid, sender)
    try:
        yield handle.start()
    finally:
        if handle.daemon is not None:
            handle.daemon.stop()
        sender.stop()


# -- a command channel in this process ---------------------------------------------------------------


@dataclass
class ChannelRig:
    """A :class:`CommandChannel` built in this process as the daemon builds it, on a real store and a
    real broker, with a registry of commands the test chooses; and a server-side sender.

    The handlers run in this process, so a test can hold one (a slow command) and see what else runs
    meanwhile, or give the channel a time source of its own (a clock that is not synchronised).
    """

    state_dir: Path
    outbox: Outbox
    journal: CommandJournal
    link: MqttLink
    replies: ReplySender
    channel: CommandChannel
    registry: CommandRegistry
    sender: CommandSender
    key: Ed25519PrivateKey
    kid: str
    applied: list[tuple[EdgeConfig, set[str]]]
    stopped: bool = False

    def stop(self, timeout: float = 10.0) -> None:
        """Stop as the daemon does: the channel, then replies, the link and the store. Idempotent."""
        if self.stopped:
            return
        self.stopped = True
        self.channel.stop(timeout)
        self.replies.stop()
        self.link.stop()
        self.outbox.close()

    def token(self, name: str, args: dict[str, Any] | None = None, *, life_s: int = 60, **kw: Any) -> str:
        """A command for this device signed with the trusted key (``now``, ``device``... to vary it)."""
        claims = make_claims(
            device=kw.pop("device", DEVICE),
            commune=kw.pop("commune", COMMUNE),
            name=name,
            args=args or {},
            life_s=life_s,
            now=kw.pop("now", None),
        )
        assert not kw, kw
        return sign(claims, self.key, self.kid)

    def send(
        self, name: str, args: dict[str, Any] | None = None, *, topic: str | None = None, **kw: Any
    ) -> tuple[str, str]:
        """Publish a signed command on ``cmd/<name>`` (or ``topic``, after the device prefix);
        returns ``(cmd_id, token)``."""
        token = self.token(name, args, **kw)
        self.sender.publish(self.channel.topics.prefix + (topic or f"cmd/{name}"), token)
        claims = unverified_claims(token)
        assert claims is not None
        return str(claims["cmd_id"]), token

    def states(self, cmd_id: str) -> list[str]:
        return [a["state"] for a in self.sender.acks(cmd_id)]


def build_channel(
    tmp_path: Path,
    broker: MosquittoBroker,
    key: Ed25519PrivateKey,
    register: Callable[[CommandRegistry], None],
    *,
    time_source: Any = None,
    max_life_s: int = 300,
    sender: CommandSender | None = None,
    runner: CommandRunner | None = None,
) -> ChannelRig:
    """Wire a channel the way :class:`edge.daemon.Daemon` does and start it (connected).

    ``register`` adds the test's commands; ``config.desired`` is always there. ``time_source`` (an
    :class:`edge.clock.TimeSource`) replaces the system clock for the command checks.
    """
    state = tmp_path / "state"
    config_file = tmp_path / "edge.toml"
    if not config_file.exists():
        write_device_config(config_file, broker.url, state_dir=state)
    config, base, _ = load_effective_config(config_file)
    state.mkdir(parents=True, exist_ok=True)
    outbox = Outbox(config.db_path)
    if time_source is None:
        journal = CommandJournal(outbox)
    else:
        from edge.clock import CommandClock

        journal = CommandJournal(outbox, CommandClock(outbox, time_source))
    link = MqttLink(LinkSettings(BrokerAddress.parse(broker.url), DEVICE, clean_start=True, session_expiry_s=0))
    topics = Topics("vn", COMMUNE, DEVICE)
    replies = ReplySender(journal, link, topics)
    applied: list[tuple[EdgeConfig, set[str]]] = []
    desired = DesiredConfig(config, base, journal, lambda new, changed: applied.append((new, changed)), replies.wake)
    registry = CommandRegistry()
    desired.register(registry)
    register(registry)
    kid = keys.key_id(key)
    settings = CommandsConfig(trusted_keys={kid: keys.public_key_b64(key)}, max_life_s=max_life_s)
    parts = (settings, {kid: key.public_key()}, outbox, journal, link, topics, registry, replies, desired)
    channel = CommandChannel(*parts) if runner is None else CommandChannel(*parts, runner=runner)
    # A probe subscribed after the channel's own: once a probe comes through, the broker has
    # processed the channel's subscriptions too (they are sent in order on connect).
    probed = threading.Event()
    link.subscribe(f"rig-probe/{uuid.uuid4()}", lambda _t, _p: probed.set())
    probe_topic = link.stats.subscriptions[-1][0]
    replies.start()
    channel.start()
    link.start()
    assert link.wait_connected(20), link.stats.last_error
    if sender is None:
        sender = sender_for(broker, "server-rig").start()

    def probe() -> bool:
        if not probed.is_set():
            sender.publish(probe_topic, b"?")
        return probed.wait(0.5)

    assert wait_for(probe, 20)
    return ChannelRig(state, outbox, journal, link, replies, channel, registry, sender, key, kid, applied)
