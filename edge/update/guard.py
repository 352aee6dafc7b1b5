"""``edge update guard``: the step before every start that takes back a new version which did not make it.

The unit runs it as ``ExecStartPre=-/opt/commune-edge/confirmed/bin/edge update guard``: from the last
version that proved healthy, so a new version that cannot even start (its ``edge`` exits at once)
cannot keep it from running. With an update on trial (marker ``pending``):

- the first start of the new version goes ahead (``launches`` becomes 1);
- any later start without a confirmation in between means the new version stopped before it was
  healthy: ``current`` is switched back to the version before it, the marker says ``rolled_back``,
  and systemd goes on to start ``current/bin/edge run``, now the old version, which reports it;
- a ``current`` that no longer points at the new version is left as it is: the switch never
  happened (``failed``), or someone already switched back (``rolled_back``).
"""

from __future__ import annotations

import logging

from edge.update.layout import CURRENT, Installation
from edge.update.marker import MarkerFile, UpdateMarker

log = logging.getLogger(__name__)


def roll_back(inst: Installation, markers: MarkerFile, marker: UpdateMarker, reason: str) -> None:
    """Point ``current`` at the version before the update again, then record why.

    In this order: a power cut between the two leaves the old version current and the marker still
    pending, which the guard then reads as a rollback (``current`` no longer names the new version).
    """
    inst.point(CURRENT, marker.from_release)
    marker.end("rolled_back", reason)
    markers.save(marker)
    log.error("rolled back from %s to %s: %s", marker.to_release, marker.from_release, reason)


def guard(inst: Installation, markers: MarkerFile) -> str:
    """Do what a start needs with the marker as it is; returns what was done, in a line."""
    marker = markers.load()
    if marker is None or marker.state != "pending":
        return "no update on trial"
    current = inst.current()
    if current != marker.to_release:
        if marker.launches == 0 and marker.runs == 0:
            marker.end("failed", f"the switch to {marker.to_release} did not happen (current is {current})")
        else:
            marker.end("rolled_back", f"current points at {current} again")
        markers.save(marker)
        return f"update to {marker.to_release} ended: {marker.reason}"
    if marker.launches == 0 and marker.runs == 0:
        marker.launches = 1
        markers.save(marker)
        return (
            f"starting {marker.to_release} on trial: it must be healthy within {marker.health_timeout_s:g} s, "
            f"else {marker.from_release} comes back"
        )
    roll_back(inst, markers, marker, f"{marker.to_version} stopped before it was healthy")
    return f"{marker.to_release} stopped before it was healthy: rolled back to {marker.from_release}"
