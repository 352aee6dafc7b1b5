"""Commands every device has: ``sync.resend``, ``device.selftest`` and ``device.update``
(``config.desired`` lives in :mod:`edge.commands.desired`, ``device.update`` in :mod:`edge.update`)."""

from __future__ import annotations

import glob
import platform
import sqlite3
import ssl
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import TYPE_CHECKING, Any

from pydantic import Field, StrictInt, model_validator

from edge import __version__
from edge.commands.registry import CommandContext, CommandRegistry, NoArgs
from edge.model import EdgeModel
from edge.update import register_update

if TYPE_CHECKING:
    from edge.daemon import Daemon

#: Device nodes a self-test lists as hardware found.
HARDWARE_GLOBS = (
    "/dev/gpiochip*",
    "/dev/ttyUSB*",
    "/dev/ttyACM*",
    "/dev/serial/by-id/*",
    "/dev/video*",
    "/dev/snd/pcm*p",
)


class ResendArgs(EdgeModel):
    from_seq: StrictInt | None = Field(
        default=None,
        ge=1,
        description="Send again the events from this seq on, even those already acknowledged (as long as "
        "the device still keeps them). Without it, only pending events are sent again, now.",
    )
    to_seq: StrictInt | None = Field(default=None, ge=1, description="Last seq to send again (default: the last).")

    @model_validator(mode="after")
    def _order(self) -> ResendArgs:
        if self.to_seq is not None and (self.from_seq is None or self.to_seq < self.from_seq):
            raise ValueError("to_seq needs a from_seq at or below it")
        return self


def _versions() -> dict[str, str]:
    out = {"commune-edge": __version__, "python": platform.python_version(), "sqlite": sqlite3.sqlite_version}
    out["openssl"] = ssl.OPENSSL_VERSION
    for dist in (
        "paho-mqtt",
        "pydantic",
        "cryptography",
        "pyserial",
        "gpiozero",
        "sounddevice",
        "opencv-python-headless",
    ):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def _command_time(daemon: Daemon) -> dict[str, Any]:
    """How this device judges a command's time now (edge.clock.CommandClock)."""
    at = daemon.journal.clock.now()
    return {"basis": at.basis, "at": round(at.now), **({"note": at.note} if at.note else {})}


def hardware_found(globs: Sequence[str] = HARDWARE_GLOBS) -> list[str]:
    return sorted({path for pattern in globs for path in glob.glob(pattern)})


def register_builtin(registry: CommandRegistry, daemon: Daemon) -> None:
    """Register ``sync.resend``, ``device.selftest`` and ``device.update`` for ``daemon``."""

    def resend(args: ResendArgs, ctx: CommandContext) -> dict[str, Any]:
        requeued = 0
        if args.from_seq is not None:
            requeued = daemon.outbox.mark_pending(args.from_seq, args.to_seq)
        daemon.uplink.resend_all()
        return {"requeued": requeued, "pending": daemon.outbox.stats().depth}

    def selftest(args: NoArgs, ctx: CommandContext) -> dict[str, Any]:
        stats = daemon.outbox.stats()
        age = stats.oldest_pending_age_s
        services: dict[str, Any] = {}
        for service in daemon.services:
            report: Callable[[], dict[str, Any]] | None = getattr(service, "selftest", None)
            name = type(service).__name__
            try:
                services[name] = report() if report is not None else {"running": True}
            except Exception as exc:
                services[name] = {"error": f"{type(exc).__name__}: {exc}"}
        return {
            "device": daemon.config.device.id,
            "roles": list(daemon.config.device.roles),
            "versions": _versions(),
            "link": {
                "broker": daemon.config.mqtt.broker,
                "connected": daemon.link.connected.is_set(),
                "connects": daemon.link.stats.connects,
                "disconnects": daemon.link.stats.disconnects,
            },
            "queue": {
                "depth": stats.depth,
                "by_priority": stats.depth_by_priority,
                "oldest_pending_age_s": None if age is None else round(age, 1),
                "inflight": daemon.uplink.inflight,
                "store_bytes": stats.db_bytes,
                "evictions": stats.evictions,
            },
            "clock_synced": daemon.outbox.clock.synced(),
            "command_time": _command_time(daemon),
            "config_version": daemon.desired.version,
            "hardware": {"found": hardware_found(), "services": services},
            "commands": sorted(r.name for r in registry),
        }

    registry.register(
        "sync.resend", ResendArgs, resend, description="Send pending (or already acknowledged) events again now."
    )
    registry.register(
        "device.selftest", NoArgs, selftest, description="Report versions, link, queue and the hardware found."
    )
    register_update(registry, daemon)
