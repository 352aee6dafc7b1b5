"""``[speaker]``: the loudspeaker's sound card — where announcements go out and where the self-test listens."""

from __future__ import annotations

from pydantic import Field

from edge.model import EdgeModel


class SpeakerConfig(EdgeModel):
    """The sound card feeding the amplifier, and optionally an input that hears the horns."""

    device: str | None = Field(
        default=None,
        min_length=1,
        description="Output device: a PortAudio/ALSA device name ('default', 'USB Audio'), a unique part of a "
        "name, or an index as listed by `python -m sounddevice`; empty: the system default. Prefer a name "
        "ALSA converts for ('default', a plug device): files of any rate are played as they are.",
    )
    capture_device: str | None = Field(
        default=None,
        min_length=1,
        description="Input that hears what is played (a microphone near a horn, or the amplifier's line-out "
        "wired into the sound card's input), named like device; every item and relay.test then reports the "
        "level heard (heard_dbfs). Empty: no self-test.",
    )
    max_volume_db: float = Field(
        default=0.0,
        ge=-60.0,
        le=0.0,
        description="The sound card's ceiling in dB (<= 0), e.g. -3 where the amplifier distorts above it: "
        "nothing is played louder, whatever the command and the [broadcast] caps allow.",
    )
