"""``[broadcast.sources]``: where a loudspeaker may fetch audio from, and its download cache.

A ``broadcast.play`` command is signed, but the URL inside it still decides which server the device
talks to. So every file URL and live stream URL is checked against an allowlist before any I/O:
``https://`` for the hosts in ``allow_hosts``, plain ``http://`` only for the hosts in
``allow_http_hosts``. Plain HTTP is a separate, explicit list because a live stream carries no hash:
on plain HTTP anyone on the path could put their own audio on the commune's horns (a downloaded file
is still checked against the command's sha256, so it cannot be swapped, only withheld).

An entry is a host name or address (``media.gia-ray.gov.vn``, ``192.168.1.20``, ``[fd00::5]``), which
allows any port, or ``host:port``, which allows that port only. Names match exactly (no wildcards, no
sub-domains), case-insensitively.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, Field, field_validator, model_validator

from edge.model import EdgeModel

MIB = 1024 * 1024

_LABEL = r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?"
_HOSTNAME_RE = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")


def normalise_host_entry(entry: str) -> str:
    """``entry`` as ``host`` or ``host:port`` in lower case (IPv6 in brackets). Raises ValueError.

    >>> normalise_host_entry("Media.Gia-Ray.gov.vn.")
    'media.gia-ray.gov.vn'
    >>> normalise_host_entry("[FD00::5]:8000")
    '[fd00::5]:8000'
    """
    text = entry.strip().lower()
    if not text:
        raise ValueError("an empty host entry")
    if "/" in text or "@" in text:
        raise ValueError(f"{entry!r}: write the host alone (no scheme, path or user), e.g. 'media.gia-ray.gov.vn'")
    port: int | None = None
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise ValueError(f"{entry!r}: '[' without ']'")
        try:
            host = str(ipaddress.IPv6Address(host))
        except ValueError:
            raise ValueError(f"{entry!r}: not an IPv6 address in brackets") from None
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"{entry!r}: only ':port' may follow the address")
            port = _port(rest[1:], entry)
        host = f"[{host}]"
    else:
        if text.count(":") > 1:
            raise ValueError(f"{entry!r}: write an IPv6 address in brackets, e.g. [fd00::5]:8000")
        host, sep, port_text = text.partition(":")
        if sep:
            port = _port(port_text, entry)
        host = host.rstrip(".")
        if not _HOSTNAME_RE.fullmatch(host):
            raise ValueError(f"{entry!r}: not a host name or address")
    return host if port is None else f"{host}:{port}"


def _port(text: str, entry: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"{entry!r}: the port must be a number from 1 to 65535")
    return int(text)


#: One allowlist entry, normalised; a bad one is reported at its own key path (``allow_hosts[2]``).
HostEntry = Annotated[str, AfterValidator(normalise_host_entry)]


class SourcesConfig(EdgeModel):
    """Where audio files and live streams may come from, and the cache files are downloaded into."""

    allow_hosts: list[HostEntry] = Field(
        default_factory=list,
        description="Hosts that audio may be fetched from over https://: 'host' (any port) or 'host:port'. "
        "Empty: no URL is allowed (text-to-speech still works).",
    )
    allow_http_hosts: list[HostEntry] = Field(
        default_factory=list,
        description="Hosts that may also be reached over plain http:// (e.g. an Icecast server on the commune "
        "LAN); same form as allow_hosts. A plain-HTTP live stream can be altered on the way: list a host "
        "here only on a network you trust.",
    )
    ca_file: Path | None = Field(
        default=None,
        description="An extra CA certificate (PEM) trusted for https:// besides the system store, e.g. the "
        "commune CA that signed the media server's certificate.",
    )
    max_file_bytes: int = Field(
        default=50 * MIB,
        ge=1024,
        description="Largest audio file fetched, in bytes; a command announcing more, or a server sending "
        "more, is refused (too_large).",
    )
    cache_max_bytes: int = Field(
        default=1024 * MIB,
        ge=1024,
        description="Byte cap of the download cache; past it the least recently used files that no "
        "scheduled item needs are deleted.",
    )
    connect_timeout_s: float = Field(
        default=10.0, gt=0, le=120, description="Seconds to connect (TCP and TLS) before a URL is unreachable."
    )
    read_timeout_s: float = Field(
        default=30.0,
        gt=0,
        le=600,
        description="Seconds a download may go without receiving a byte before it is abandoned (unreachable).",
    )
    fetch_deadline_s: float = Field(
        default=1800.0,
        gt=0,
        le=86400,
        description="Seconds one download may take in all, however slowly the bytes trickle in.",
    )
    reconnect_min_s: float = Field(
        default=0.5, gt=0, le=60, description="First wait before a lost live stream is dialled again."
    )
    reconnect_max_s: float = Field(
        default=10.0,
        gt=0,
        le=600,
        description="Cap of the doubling wait between attempts to reach a lost live stream.",
    )

    @field_validator("allow_hosts", "allow_http_hosts")
    @classmethod
    def _once_each(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))

    @model_validator(mode="after")
    def _sizes_and_waits(self) -> SourcesConfig:
        if self.cache_max_bytes < self.max_file_bytes:
            raise ValueError(
                f"cache_max_bytes ({self.cache_max_bytes}) must be at least max_file_bytes ({self.max_file_bytes})"
            )
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must be at least reconnect_min_s")
        return self
