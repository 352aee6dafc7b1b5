"""What systemd and a silent broker look like to the daemon, for the systemd and watchdog tests.

``notify_socket``: the datagram socket systemd listens on for ``sd_notify`` (``$NOTIFY_SOCKET``), with
every message the daemon sent. ``silent_broker``: a TCP port that accepts connections and never
answers a byte, as a broker that is frozen (or a firewall that swallows everything after the
handshake) looks from the device.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest


@dataclass
class NotifySocket:
    """The datagram socket systemd listens on, with every message received (time, fields)."""

    path: Path
    sock: socket.socket
    messages: list[tuple[float, dict[str, str]]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def _run(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append((time.monotonic(), fields))

    def with_key(self, key: str) -> list[tuple[float, dict[str, str]]]:
        return [(t, m) for t, m in list(self.messages) if key in m]

    def pets(self, since: float = 0.0) -> int:
        return sum(1 for t, m in list(self.messages) if m.get("WATCHDOG") == "1" and t >= since)

    def statuses(self) -> list[str]:
        return [m["STATUS"] for _, m in self.with_key("STATUS")]

    def env(self, watchdog_usec: int = 1_000_000) -> dict[str, str]:
        return {"NOTIFY_SOCKET": str(self.path), "WATCHDOG_USEC": str(watchdog_usec)}


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    ns = NotifySocket(path, sock)
    t = threading.Thread(target=ns._run, daemon=True)
    t.start()
    yield ns
    ns._stop.set()
    t.join(2)
    sock.close()


@dataclass
class SilentBroker:
    """A loopback port that accepts every connection and never sends a byte; ``accepted`` grows by one
    per connection attempt."""

    sock: socket.socket
    accepted: list[socket.socket] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.sock.getsockname()[1]}"

    def _run(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                self.accepted.append(self.sock.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return


@pytest.fixture
def silent_broker() -> Iterator[SilentBroker]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    silent = SilentBroker(sock)
    t = threading.Thread(target=silent._run, daemon=True)
    t.start()
    yield silent
    silent._stop.set()
    t.join(2)
    for s in silent.accepted:
        s.close()
    sock.close()
