"""Render the shipped Mosquitto configuration and ACL templates (``scripts/broker/*.template``).

The templates are plain Mosquitto files with ``${name}`` placeholders (:class:`string.Template`), so a
commune server team can read them, and edit them by hand if they must. The ACL template has one block,
between ``#@server-begin`` and ``#@server-end``, that is repeated for each server identity.

Every value is checked before it is substituted: a newline smuggled into a commune slug or a path
would otherwise add an ACL rule or a configuration line.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from string import Template

from edge.keys import write_file
from edge.model import SLUG_RE
from edge.pki import PkiError, server_cn

#: Where the templates live in a checkout (the broker is set up from the repository, not from a Pi).
TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "scripts" / "broker"
CONF_TEMPLATE = TEMPLATE_DIR / "mosquitto.conf.template"
ACL_TEMPLATE = TEMPLATE_DIR / "acl.template"

#: Largest packet the broker accepts by default (``max_packet_size``, announced to MQTT 5 clients).
#: Commands and configs are far smaller (the device itself caps incoming messages lower); event
#: batches are the large ones, and a device keeps them under the announced size.
DEFAULT_MAX_PACKET_SIZE = 1024 * 1024

_BLOCK_RE = re.compile(r"^#@server-begin\n(?P<body>.*?)^#@server-end\n", re.MULTILINE | re.DOTALL)
_SAFE_VALUE_RE = re.compile(r"^[^\s#]([^\n\r#]*[^\s#])?$")


class BrokerConfigError(PkiError):
    """A value that cannot go into the broker configuration, or a damaged template."""


@dataclass(frozen=True)
class BrokerFiles:
    """Paths of a rendered broker configuration."""

    conf: Path
    acl: Path


def render_acl(
    *, commune: str, root: str = "vn", servers: Sequence[str] = ("collector",), template: Path | None = None
) -> str:
    """The ACL for one commune: device patterns plus one block per server identity.

    ``servers`` are server *names*; each block grants the CN ``server:<name>`` (:func:`edge.pki.server_cn`).
    """
    _slug(root, "root")
    _slug(commune, "commune")
    if not servers:
        raise BrokerConfigError("at least one server identity is needed (nothing could read the events)")
    text = _read(template or ACL_TEMPLATE)
    match = _BLOCK_RE.search(text)
    if match is None:
        raise BrokerConfigError("ACL template has no #@server-begin / #@server-end block")
    blocks = "".join(
        Template(match["body"]).substitute(root=root, commune=commune, server=server_cn(name)) + "\n"
        for name in servers
    )
    text = text[: match.start()] + "${__servers__}" + text[match.end() :]
    return _substitute(Template(text), root=root, commune=commune, __servers__=blocks)


def render_mosquitto_conf(
    *,
    commune: str,
    ca_file: Path,
    cert_file: Path,
    key_file: Path,
    acl_file: Path,
    persistence_dir: Path,
    port: int = 8883,
    bind_address: str | None = None,
    log_dest: str = "syslog",
    max_packet_size: int = DEFAULT_MAX_PACKET_SIZE,
    user: str = "mosquitto",
    template: Path | None = None,
) -> str:
    """The broker configuration: one TLS listener that requires client certificates from the CA.

    ``bind_address`` None listens on all interfaces; tests bind to 127.0.0.1 on a free port.
    ``log_dest`` is a Mosquitto ``log_dest`` value (``syslog``, ``stderr``, ``file /var/log/...``).
    ``user`` is the account mosquitto switches to when started as root; it must be able to read
    ``key_file`` (mode 0600 as written by the CA: chown it to that account) and write ``persistence_dir``.
    """
    _slug(commune, "commune")
    if not 1 <= port <= 65535:
        raise BrokerConfigError(f"port {port}: must be 1-65535")
    if max_packet_size < 1024:
        raise BrokerConfigError(f"max_packet_size {max_packet_size}: too small for an event batch")
    listen = str(port)
    if bind_address is not None:
        listen += " " + _safe(bind_address, "bind_address")
    values = {
        "commune": commune,
        "listen": listen,
        "ca_file": _safe(str(ca_file), "ca_file"),
        "cert_file": _safe(str(cert_file), "cert_file"),
        "key_file": _safe(str(key_file), "key_file"),
        "acl_file": _safe(str(acl_file), "acl_file"),
        "persistence_dir": _safe(str(persistence_dir).rstrip("/") or "/", "persistence_dir"),
        "log_dest": _safe(log_dest, "log_dest"),
        "max_packet_size": str(max_packet_size),
        "user": _safe(user, "user"),
    }
    return _substitute(Template(_read(template or CONF_TEMPLATE)), **values)


def write_broker_config(
    out_dir: Path,
    *,
    commune: str,
    root: str = "vn",
    servers: Sequence[str] = ("collector",),
    ca_file: Path,
    cert_file: Path,
    key_file: Path,
    persistence_dir: Path,
    port: int = 8883,
    bind_address: str | None = None,
    log_dest: str = "syslog",
    max_packet_size: int = DEFAULT_MAX_PACKET_SIZE,
    user: str = "mosquitto",
    force: bool = False,
) -> BrokerFiles:
    """Render both templates into ``out_dir`` as ``mosquitto.conf`` and ``acl`` (the conf names the acl)."""
    out_dir = Path(out_dir)
    acl_path = out_dir / "acl"
    conf_path = out_dir / "mosquitto.conf"
    acl = render_acl(commune=commune, root=root, servers=servers)
    conf = render_mosquitto_conf(
        commune=commune,
        ca_file=ca_file,
        cert_file=cert_file,
        key_file=key_file,
        acl_file=acl_path.resolve(),
        persistence_dir=persistence_dir,
        port=port,
        bind_address=bind_address,
        log_dest=log_dest,
        max_packet_size=max_packet_size,
        user=user,
    )
    write_file(acl_path, acl.encode(), mode=0o644, force=force)
    write_file(conf_path, conf.encode(), mode=0o644, force=force)
    return BrokerFiles(conf_path, acl_path)


def _read(path: Path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise BrokerConfigError(f"cannot read template {path}: {exc.strerror or exc}") from exc


def _substitute(template: Template, **values: str) -> str:
    try:
        return template.substitute(**values)
    except (KeyError, ValueError) as exc:
        raise BrokerConfigError(f"template placeholder problem: {exc}") from exc


def _slug(value: str, what: str) -> None:
    if not SLUG_RE.fullmatch(value):
        raise BrokerConfigError(f"{what} {value!r}: must be lower-case letters, digits and hyphens")


def _safe(value: str, what: str) -> str:
    """A value for one configuration line: no line breaks, no comment sign, no edge whitespace."""
    if not _SAFE_VALUE_RE.fullmatch(value):
        raise BrokerConfigError(f"{what} {value!r}: must be one line without '#' or surrounding spaces")
    return value
