"""The server side of the command channel: sign a command, publish it, and follow its acks.

Used by ``edge command send`` and by the tests; a commune server written in another language does
the same three things (see the README's section for the server team).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.commands.claims import DEFAULT_LIFE_S, make_claims
from edge.commands.jws import sign
from edge.keys import key_id
from edge.messages import TERMINAL_STATES
from edge.sync.link import LinkSettings, MqttLink
from edge.topics import Topics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sent:
    """A command as published."""

    cmd_id: str
    device: str
    name: str
    topic: str
    token: str
    claims: dict[str, Any]


class CommandSender:
    """A server-side MQTT client that signs and sends commands and collects what devices answer."""

    def __init__(self, settings: LinkSettings, *, root: str, commune: str) -> None:
        self.root = root
        self.commune = commune
        self.link = MqttLink(settings)
        self._cond = threading.Condition()
        self._acks: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self._reported: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.link.subscribe(f"{root}/{commune}/dev/+/ack", self._on_ack)
        self.link.subscribe(f"{root}/{commune}/dev/+/cfg/reported", self._on_reported)

    def topics(self, device: str) -> Topics:
        return Topics(self.root, self.commune, device)

    # -- incoming -------------------------------------------------------------------------------

    def _on_ack(self, topic: str, payload: bytes) -> None:
        try:
            ack = json.loads(payload)
        except ValueError:
            log.warning("an ack on %s is not JSON", topic)
            return
        if isinstance(ack, dict):
            with self._cond:
                self._acks[str(ack.get("cmd_id"))].append(ack)
                self._cond.notify_all()

    def _on_reported(self, topic: str, payload: bytes) -> None:
        try:
            report = json.loads(payload)
        except ValueError:
            return
        if isinstance(report, dict):
            device = topic.split("/")[3]
            with self._cond:
                self._reported[device].append(report)
                self._cond.notify_all()

    def acks(self, cmd_id: str | None) -> list[dict[str, Any]]:
        """Every ack seen so far for ``cmd_id`` (``None``: acks that could name no command)."""
        with self._cond:
            return list(self._acks.get(str(cmd_id), []))

    def _wait(self, predicate: Callable[[], Any], timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = predicate()
                if found:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)

    def wait_ack(self, cmd_id: str, timeout: float, states: frozenset[str] = TERMINAL_STATES) -> dict[str, Any] | None:
        """The first ack for ``cmd_id`` in one of ``states`` (default: a terminal one), or None."""

        def find() -> dict[str, Any] | None:
            return next((a for a in self._acks.get(cmd_id, []) if a.get("state") in states), None)

        return self._wait(find, timeout)  # type: ignore[no-any-return]

    def wait_reported(self, device: str, version: int, timeout: float) -> dict[str, Any] | None:
        """The device's ``cfg/reported`` for ``version``, or None."""

        def find() -> dict[str, Any] | None:
            return next((r for r in self._reported.get(device, []) if r.get("version") == version), None)

        return self._wait(find, timeout)  # type: ignore[no-any-return]

    # -- outgoing -------------------------------------------------------------------------------

    def sign(
        self,
        device: str,
        name: str,
        args: Mapping[str, Any] | None,
        key: Ed25519PrivateKey,
        *,
        kid: str | None = None,
        life_s: int = DEFAULT_LIFE_S,
        cmd_id: str | None = None,
        now: float | None = None,
    ) -> tuple[str, dict[str, Any]]:
        claims = make_claims(
            device=device, commune=self.commune, name=name, args=args, life_s=life_s, now=now, cmd_id=cmd_id
        )
        return sign(claims, key, kid or key_id(key)), claims

    def send(
        self,
        device: str,
        name: str,
        args: Mapping[str, Any] | None,
        key: Ed25519PrivateKey,
        *,
        kid: str | None = None,
        life_s: int = DEFAULT_LIFE_S,
        timeout: float = 10.0,
    ) -> Sent:
        """Sign and publish a command (QoS 1).

        ``config.desired`` goes to ``cfg/desired``, retained and with no message expiry, so the broker
        keeps the latest version for a device that is off until it comes back (the device takes a
        newer version after its ``exp``: :mod:`edge.commands.desired`). Anything else goes to
        ``cmd/<name>`` with the message expiry at the command's ``exp``. Raises LinkError or
        TimeoutError if the broker does not take it.
        """
        token, claims = self.sign(device, name, args, key, kid=kid, life_s=life_s, cmd_id=str(uuid.uuid4()))
        topics = self.topics(device)
        retained = name == "config.desired"
        topic = topics.cfg_desired if retained else topics.cmd(name)
        expiry = None if retained else max(1, claims["exp"] - int(time.time()))
        self.link.publish(topic, token, qos=1, retain=retained, expiry_s=expiry).result(timeout)
        return Sent(claims["cmd_id"], device, name, topic, token, claims)

    def publish(self, topic: str, payload: bytes | str, *, retain: bool = False, timeout: float = 10.0) -> None:
        """Publish anything (the tests' forged and replayed messages)."""
        self.link.publish(topic, payload, qos=1, retain=retain).result(timeout)

    # -- lifetime -------------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> CommandSender:
        self.link.start()
        if not self.link.wait_connected(timeout):
            self.link.stop()
            raise TimeoutError(f"could not connect to {self.link.settings.address} within {timeout:g} s")
        return self

    def stop(self) -> None:
        self.link.stop()

    def __enter__(self) -> CommandSender:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
