"""The update marker, ``<state_dir>/update.json``: which switch of versions is on trial, and how it ended.

Written (atomically, fsynced) by the version that installs an update, *before* it switches the
``current`` symlink; read and advanced by the guard that runs before every start and by the new
version itself. Its ``state``:

- ``pending``: the new version is on trial. ``launches`` counts the starts the guard let it have and
  ``runs`` the starts of its daemon; a second start without a confirmation in between means the
  new version stopped (crashed, exited, was killed by the watchdog) before it was healthy;
- ``confirmed``: the new version was healthy within ``health_timeout_s``;
- ``rolled_back``: it was not, and ``current`` points at the version before it again (``reason``);
- ``failed``: the switch itself did not happen (``reason``).

``reported`` turns true once the outcome is an ``update`` event in the store.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from edge.clock import now_iso
from edge.fetch import fsync_dir

log = logging.getLogger(__name__)

MARKER_FILE = "update.json"
#: The marker's own format (a newer program's marker with a higher one is left alone).
MARKER_FORMAT = 1

MarkerState = Literal["pending", "confirmed", "rolled_back", "failed"]


@dataclass
class UpdateMarker:
    """One switch from ``from_release`` to ``to_release`` and where it stands."""

    cmd_id: str
    from_release: str
    to_release: str
    from_version: str
    to_version: str
    sha256: str
    health_timeout_s: float
    state: MarkerState = "pending"
    switched_at: str = field(default_factory=now_iso)
    launches: int = 0
    runs: int = 0
    reason: str = ""
    ended_at: str | None = None
    reported: bool = False

    def end(self, state: MarkerState, reason: str = "") -> None:
        self.state = state
        self.reason = reason
        self.ended_at = now_iso()
        self.reported = False

    def summary(self) -> dict[str, Any]:
        """What an ``update`` event says about this switch."""
        out: dict[str, Any] = {
            "cmd_id": self.cmd_id,
            "from": self.from_version,
            "to": self.to_version,
            "release": self.to_release,
            "previous_release": self.from_release,
        }
        if self.reason:
            out["reason"] = self.reason
        return out


class MarkerFile:
    """``<state_dir>/update.json``."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / MARKER_FILE

    def load(self) -> UpdateMarker | None:
        """The marker, or None if there is none (or it cannot be used: logged)."""
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.error("ignoring %s: %s", self.path, exc)
            return None
        if not isinstance(doc, dict) or not isinstance(doc.get("format"), int) or doc["format"] > MARKER_FORMAT:
            log.error("ignoring %s: not an update marker this version can read", self.path)
            return None
        names = {f.name for f in fields(UpdateMarker)}
        try:
            return UpdateMarker(**{k: v for k, v in doc.items() if k in names})
        except TypeError as exc:
            log.error("ignoring %s: %s", self.path, exc)
            return None

    def save(self, marker: UpdateMarker) -> None:
        """Write the marker so that a power cut leaves either the old or the new one."""
        doc = {"format": MARKER_FORMAT, **asdict(marker)}
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(doc, f, ensure_ascii=False, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        fsync_dir(self.path.parent)
