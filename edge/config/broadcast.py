"""``[broadcast]``: how the loudspeaker schedules and plays announcements (DESIGN.md §8).

The relay board is ``[relays]``, the sound card ``[speaker]``, the voice ``[speech]``; this section
holds what the scheduler itself decides: quiet hours, volume caps, how late a programme may start,
and where audio may be fetched from (``[broadcast.sources]``).
"""

from __future__ import annotations

from datetime import time as TimeOfDay

from pydantic import Field, field_validator, model_validator

from edge.config.sources import SourcesConfig
from edge.model import EdgeModel, Slug


class QuietHours(EdgeModel):
    """A span of local time in which normal items are held back (priority and emergency still play)."""

    start: TimeOfDay = Field(description="Local time the quiet span begins, e.g. '21:30'.")
    end: TimeOfDay = Field(
        description="Local time it ends (exclusive), e.g. '05:30'; earlier than start means it crosses midnight."
    )

    @model_validator(mode="after")
    def _not_empty(self) -> QuietHours:
        if self.start == self.end:
            raise ValueError(f"start and end are both {self.start:%H:%M}: the span would be empty")
        return self

    def covers(self, at: TimeOfDay) -> bool:
        """Whether local time ``at`` falls in this span."""
        if self.start < self.end:
            return self.start <= at < self.end
        return at >= self.start or at < self.end  # crosses midnight


class BroadcastConfig(EdgeModel):
    """The broadcast scheduler of a loudspeaker."""

    quiet_hours: list[QuietHours] = Field(
        default_factory=list,
        description="Spans of local time in which normal items wait (priority and emergency play), e.g. "
        "[{start = '21:30', end = '05:30'}].",
    )
    max_volume_db: float = Field(
        default=0.0,
        ge=-60.0,
        le=0.0,
        description="Global volume cap in dB (<= 0): no item plays louder, whatever its volume_db says.",
    )
    zone_max_volume_db: dict[Slug, float] = Field(
        default_factory=dict,
        description="Volume cap per zone in dB (<= 0), e.g. {market = -6}: an item that includes the zone "
        "plays at most this loud (one sound card feeds every zone).",
    )
    idle_off_s: float | None = Field(
        default=None,
        ge=0,
        le=3600,
        description="Seconds the amplifier stays on after the last item, so the next one needs no warm-up; "
        "empty: the relay profile's idle_off_s.",
    )
    occurrence_grace_s: float = Field(
        default=1800.0,
        ge=0,
        le=86400,
        description="How late an occurrence of a programme (times/days) may still start, e.g. when held behind "
        "an emergency or by quiet hours; later, it is reported expired and the next one waits.",
    )
    resume_rewind_s: float = Field(
        default=1.0,
        ge=0,
        le=30,
        description="An item resumed after a preemption starts this many seconds before where it was cut, "
        "so listeners hear the interrupted words again.",
    )
    relay_test_s: float = Field(
        default=3.0, gt=0, le=30, description="Seconds of test tone per zone in relay.test, unless it says."
    )
    max_items: int = Field(
        default=500,
        ge=1,
        le=100_000,
        description="Most items the schedule holds; a broadcast.play beyond it is refused (queue_full).",
    )
    sources: SourcesConfig = Field(
        default_factory=SourcesConfig,
        description="Where audio files and live streams may come from, and the download cache.",
    )

    @field_validator("zone_max_volume_db")
    @classmethod
    def _caps_are_attenuations(cls, value: dict[str, float]) -> dict[str, float]:
        bad = [f"{zone} = {db}" for zone, db in value.items() if not -60.0 <= db <= 0.0]
        if bad:
            raise ValueError(f"zone caps must be between -60 and 0 dB: {', '.join(bad)}")
        return value

    def quiet_at(self, at: TimeOfDay) -> bool:
        """Whether local time ``at`` is in any of the quiet hours."""
        return any(span.covers(at) for span in self.quiet_hours)


def zone_cap_problems(settings: BroadcastConfig, relay_profile: str) -> list[tuple[tuple[str, ...], str]]:
    """``(location, message)`` for each zone cap that names a zone the relay board does not have (a
    typo there would leave the zone it meant uncapped)."""
    from drivers.relay.profile import load_relay_profile  # drivers import the config's base model
    from edge.exceptions import BadProfile

    try:
        zones = load_relay_profile(relay_profile).zone_names
    except BadProfile:
        return []  # reported under relays.profile
    return [
        (("broadcast", "zone_max_volume_db", zone), f"the relay board has no zone {zone!r} ({', '.join(zones)})")
        for zone in settings.zone_max_volume_db
        if zone not in zones
    ]
