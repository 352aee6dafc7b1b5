"""What every section shares: default paths, the broker address, secret files, roles."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

DEFAULT_CONFIG_PATH = Path("/etc/commune-edge/edge.toml")
DEFAULT_STATE_DIR = Path("/var/lib/commune-edge")
ENV_PREFIX = "EDGE_"

Role = Literal["counter", "loudspeaker"]


@dataclass(frozen=True)
class BrokerAddress:
    """A parsed ``mqtt://host:port`` or ``mqtts://host:port`` URL."""

    host: str
    port: int
    tls: bool

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts"):
            raise ValueError(f"broker URL must start with mqtt:// or mqtts://, got {url!r}")
        if not parts.hostname:
            raise ValueError(f"broker URL has no host: {url!r}")
        if parts.path not in ("", "/") or parts.query or parts.username or parts.password:
            raise ValueError(f"broker URL takes only scheme, host and port (no path or user): {url!r}")
        try:
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"broker URL has a bad port: {url!r}") from exc
        tls = parts.scheme == "mqtts"
        return cls(parts.hostname, port or (8883 if tls else 1883), tls)

    def __str__(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def resolve_secret_path(path: Path) -> Path:
    """A secret file path; relative paths are looked up in systemd's credentials directory first."""
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if not path.is_absolute() and creds and (Path(creds) / path).exists():
        return Path(creds) / path
    return path
