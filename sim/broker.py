"""A private Mosquitto broker for tests, demos and benchmarks.

It listens on a free loopback port with a generated configuration, so it never depends on (or
disturbs) a broker that already runs on the machine's port 1883. It can be killed with SIGKILL and
started again on the same port, which is how the chaos tests cut the network under a device.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def current_user() -> str:
    """Name of the account this process runs as (for mosquitto's ``user`` option)."""
    return pwd.getpwuid(os.geteuid()).pw_name


def find_mosquitto() -> str | None:
    """Path of the ``mosquitto`` binary (Debian installs it in /usr/sbin, often not on PATH)."""
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.access(p, os.X_OK)), None
    )


@dataclass
class BrokerTls:
    """Files for a TLS listener that requires client certificates."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    acl_file: Path | None = None
    require_certificate: bool = True


@dataclass
class MosquittoBroker:
    """One private ``mosquitto`` process; ``kill()`` and ``start()`` keep the same port."""

    workdir: Path
    port: int = field(default_factory=free_port)
    tls: BrokerTls | None = None
    extra_config: str = ""
    #: Mosquitto's ``max_packet_size``: a client that sends a larger packet is disconnected (the limit
    #: is also announced to MQTT 5 clients in CONNACK).
    max_packet_size: int | None = None
    #: Mosquitto's ``message_size_limit``: a larger publish is refused (an MQTT 5 QoS 1 publisher gets
    #: a PUBACK with an error code) and the client stays connected.
    message_size_limit: int | None = None
    #: A complete configuration to run instead of the generated one, e.g. the shipped template
    #: (``edge.broker_config``) rendered for this broker's ``port``. Give ``tls`` too when it has a TLS
    #: listener, so that ``url`` says ``mqtts``.
    config: str | None = None
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        scheme = "mqtts" if self.tls else "mqtt"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _write_config(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "mosquitto.conf"
        if self.config is not None:
            conf.write_text(self.config)
            return conf
        lines = [
            f"listener {self.port} 127.0.0.1",
            "persistence false",
            "set_tcp_nodelay true",  # as the shipped template (scripts/broker/mosquitto.conf.template)
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "max_queued_messages 100000",
            "max_inflight_messages 1000",
        ]
        if self.tls:
            lines += [
                f"cafile {self.tls.ca_file}",
                f"certfile {self.tls.cert_file}",
                f"keyfile {self.tls.key_file}",
                f"require_certificate {'true' if self.tls.require_certificate else 'false'}",
                "use_identity_as_username true",
                "use_username_as_clientid true",  # as the shipped template: no session takeover by id
                "allow_anonymous false",
                # Started as root, mosquitto drops to the "mosquitto" user before it loads the
                # certificates, and the test's 0600 keys would be unreadable: stay the current user.
                f"user {current_user()}",
            ]
            if self.tls.acl_file:
                lines.append(f"acl_file {self.tls.acl_file}")
        else:
            lines.append("allow_anonymous true")
        if self.max_packet_size is not None:
            lines.append(f"max_packet_size {self.max_packet_size}")
        if self.message_size_limit is not None:
            lines.append(f"message_size_limit {self.message_size_limit}")
        if self.extra_config:
            lines.append(self.extra_config)
        conf.write_text("\n".join(lines) + "\n")
        return conf

    def start(self, timeout: float = 10.0) -> MosquittoBroker:
        binary = find_mosquitto()
        if binary is None:
            raise FileNotFoundError("mosquitto is not installed (Debian: apt-get install mosquitto)")
        conf = self._write_config()
        logf = open(self.workdir / "mosquitto.log", "ab")  # noqa: SIM115 - owned by the process
        self._proc = subprocess.Popen([binary, "-c", str(conf)], stdout=logf, stderr=logf)
        logf.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"mosquitto exited with {self._proc.returncode}: "
                    + (self.workdir / "mosquitto.log").read_text()[-2000:]
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.02)
        raise TimeoutError(f"mosquitto did not listen on port {self.port} within {timeout}s")

    def pause(self) -> None:
        """SIGSTOP: the broker hangs (a frozen server, a saturated network); connections stay open."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL, as a power cut or OOM kill would: no will messages from the broker itself."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGKILL)
            self._proc.wait()
        self._proc = None

    def restart(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def __enter__(self) -> MosquittoBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
