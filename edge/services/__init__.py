"""The device's services (rating, broadcast, camera), built from the configuration.

A service is an object with ``start()``, ``stop()``, ``reconfigure(config)`` and ``loops()``. The daemon
builds them with :func:`build_services` after the store and before the link, starts them in order once
the link is up, stops them in reverse order before the link goes down, and calls ``reconfigure`` with
the new :class:`~edge.config.EdgeConfig` when a live configuration change touches only keys in
:data:`LIVE_KEYS`. Services register their commands on the daemon's
:class:`~edge.commands.registry.CommandRegistry` when built.

``loops()`` names the threads a service stands on, for the daemon's
:class:`~edge.supervisor.Supervisor`: one that dies of an exception gets the daemon restarted (and
systemd's watchdog no longer petted), as for the daemon's own loops. A thread that comes and goes
(a camera's stream reopened, the panel's serial port found again) is not listed itself: the loop that
owns it is.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

from drivers.resources import Resources
from edge.commands.registry import CommandRegistry
from edge.config import EdgeConfig
from edge.store import Outbox
from edge.supervisor import Loop

log = logging.getLogger(__name__)

#: The store ``meta`` key where the rating service keeps the panel's current problem (a JSON object,
#: ``{"panel": "cannot open the GPIO panel (...): ..."}``, or ``{}``), read by ``edge status`` as it reads
#: the loudspeaker's (:data:`edge.services.broadcast.HARDWARE_META`). Here, not in the rating module,
#: so that ``edge status`` does not import the panel drivers to find it.
RATING_HARDWARE_META = "rating.hardware"

#: Config key paths (a section, or ``section.key``) whose change applies without a restart. A changed
#: key outside these restarts the daemon in-process (stop everything, start with the new config).
LIVE_KEYS: frozenset[str] = frozenset(
    {
        "store.max_bytes",
        "store.keep_acked_s",
        "sync.batch_max_events",
        "sync.batch_max_bytes",
        "sync.max_inflight",
        "sync.ack_timeout_s",
        "health",
        # The rating service applies these itself (edge/services/rating.py); [panel] and
        # rating.stuck_after_s need the panel reopened, so they restart.
        "rating.counter",
        "rating.mode",
        "rating.window_s",
        "rating.cooldown_s",
        "rating.burst_presses",
        "rating.burst_window_s",
        "rating.roster",
        "rating.feedback",
        # The broadcast service applies these itself (edge/services/broadcast/service.py); [relays],
        # [speaker], [speech] and broadcast.sources reopen hardware or the cache, so they restart.
        "broadcast.quiet_hours",
        "broadcast.max_volume_db",
        "broadcast.zone_max_volume_db",
        "broadcast.idle_off_s",
        "broadcast.occurrence_grace_s",
        "broadcast.resume_rewind_s",
        "broadcast.relay_test_s",
        "broadcast.max_items",
    }
)


class Service(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...

    def reconfigure(self, config: EdgeConfig) -> None: ...

    def loops(self) -> list[Loop]:
        """The threads this service runs on, each looked up when checked (it may not exist yet)."""
        ...


@dataclass(frozen=True)
class ServiceContext:
    """What a service is built from."""

    config: EdgeConfig
    outbox: Outbox
    registry: CommandRegistry
    resources: Resources


def build_services(ctx: ServiceContext) -> list[Service]:
    """The services this device's roles and configuration call for."""
    services: list[Service] = []
    if "counter" in ctx.config.device.roles:
        if ctx.config.panel is None:
            log.warning("counter role without a [panel] section: no ratings are taken on this device")
        else:
            from edge.services.rating import RatingService

            services.append(RatingService(ctx.config, ctx.outbox, ctx.registry, ctx.resources))
        if ctx.config.camera:
            from edge.services.camera.service import CameraService

            cameras = CameraService(ctx.config, ctx.outbox, ctx.registry, ctx.resources)
            for rating in services:  # the rating service, if any: a committed low rating records evidence
                rating.add_observer(cameras.on_rating)  # type: ignore[attr-defined]
            services.append(cameras)
    if "loudspeaker" in ctx.config.device.roles:
        from edge.services.broadcast.service import BroadcastService

        # Built here, before the link starts: its constructor opens every relay first of all.
        services.append(BroadcastService(ctx.config, ctx.outbox, ctx.registry, ctx.resources))
    return services
