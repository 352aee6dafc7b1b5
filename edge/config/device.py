"""``[device]``, ``[store]`` and ``[health]``: who the device is and how it keeps its events."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from edge.config.common import DEFAULT_STATE_DIR, Role
from edge.model import EdgeModel, Slug


class DeviceConfig(EdgeModel):
    id: Slug = Field(description="This device's id, unique in the commune, e.g. 'counter-01'.")
    commune: Slug = Field(description="The commune's slug, e.g. 'gia-ray'.")
    roles: list[Role] = Field(
        min_length=1, description="What this device does: 'counter' (rating panel) and/or 'loudspeaker'."
    )


class StoreConfig(EdgeModel):
    state_dir: Path = Field(
        default=DEFAULT_STATE_DIR, description="Directory for events.db and media; created if missing."
    )
    max_bytes: int = Field(
        default=512 * 1024 * 1024,
        ge=256 * 1024,
        description="Byte cap on events.db plus its WAL, and the cameras' clips and snapshots with them. "
        "Past it, bulk then normal events are evicted; critical events never are. Pictures take only what "
        "the events leave: the oldest are deleted when the events grow.",
    )
    keep_acked_s: int = Field(
        default=86400,
        ge=0,
        description="How long events the server has acknowledged stay listed in `edge events`.",
    )


class HealthConfig(EdgeModel):
    interval_s: float = Field(default=300.0, ge=1.0, description="Seconds between health events.")
