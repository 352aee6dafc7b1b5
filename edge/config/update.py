"""``[update]``: where a signed software update may come from, where it goes, and when it is kept.

A ``device.update`` command is signed, but it is still the URL inside it that decides which server the
device downloads its next version from: only ``https://`` to a host in ``allow_hosts`` is fetched
(entries as in ``broadcast.sources.allow_hosts``: ``host`` for any port, or ``host:port``). Empty, the
default: the device takes no update at all. This section can only be set in the local file, never by
``cfg/desired`` (a server must not be able to widen where code comes from).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator

from edge.config.sources import HostEntry
from edge.model import EdgeModel

MIB = 1024 * 1024

#: Where ``scripts/install-pi`` installs: ``versions/<release>/`` venvs and the ``current`` symlink.
DEFAULT_INSTALL_ROOT = Path("/opt/commune-edge")


class UpdateConfig(EdgeModel):
    """Signed software updates (``device.update``)."""

    allow_hosts: list[HostEntry] = Field(
        default_factory=list,
        description="Hosts that update wheels may be downloaded from over https://: 'host' (any port) or "
        "'host:port'. Empty: every device.update is refused.",
    )
    ca_file: Path | None = Field(
        default=None,
        description="An extra CA certificate (PEM) trusted for the update server besides the system store, "
        "e.g. the commune CA.",
    )
    install_root: Path = Field(
        default=DEFAULT_INSTALL_ROOT,
        description="The installation: versions/<release>/ holds one venv per version and 'current' is the "
        "symlink systemd runs (current/bin/edge run); it must be writable by the daemon's user.",
    )
    health_timeout_s: float = Field(
        default=180.0,
        ge=5.0,
        le=3600.0,
        description="Seconds a new version has, from its start, to be healthy (every loop alive, services "
        "started, the broker link up); if it is not, it rolls back to the version before it.",
    )
    keep_versions: int = Field(
        default=2,
        ge=1,
        le=20,
        description="Installed versions kept once an update is confirmed (the running one included); older "
        "ones are deleted, except any that a kept version takes its dependencies from.",
    )
    max_bytes: int = Field(
        default=64 * MIB,
        ge=64 * 1024,
        description="Largest wheel downloaded, in bytes; a command announcing more, or a server sending more, "
        "is refused (too_large).",
    )
    check_timeout_s: float = Field(
        default=300.0,
        ge=10.0,
        le=3600.0,
        description="Seconds each step of installing and checking a new version (venv, pip, `edge doctor "
        "--quick` with the new version) may take before the update is abandoned.",
    )

    @field_validator("allow_hosts")
    @classmethod
    def _once_each(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))
