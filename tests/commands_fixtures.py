"""A device that trusts one signing key, and the commune server's side that signs and sends."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge import keys
from edge.commands.sender import CommandSender
from edge.config import BrokerAddress
from edge.store import Outbox
from edge.sync.link import LinkSettings
from sim.broker import MosquittoBroker
from sim.harness import EdgeProcess, run_edge, wait_for
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
