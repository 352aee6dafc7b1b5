"""What a ``broadcast.play`` asks for, and when each of its plays is due.

:class:`PlayArgs` is the command's argument model (DESIGN.md §8), checked as strictly as every other
command's: an argument that does not fit is ``invalid_args`` with its key path, before anything is
scheduled. What only this device can judge (its zones, the hosts it may fetch from, the speech length
cap, the clock) is checked by the subclass :func:`bind_play_args` makes for one service.

:class:`Item` is one scheduled broadcast at run time. An item has *occurrences*: a one-shot item has
one (at ``start_at``, or at once), a programme (``times`` with ``days`` and ``until``) has one per
listed time on each listed day. Each occurrence is played ``repeat`` times, ``gap_s`` apart, and must
start by its deadline (``not_after``; for a programme also the configured grace after its time) or
it is expired, never played late.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, tzinfo
from datetime import time as TimeOfDay
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol

from pydantic import (
    AwareDatetime,
    Discriminator,
    Field,
    StrictFloat,
    StrictInt,
    Tag,
    field_validator,
    model_validator,
)

from edge.config import WEEKDAYS, Weekday
from edge.model import EdgeModel

Priority = Literal["normal", "priority", "emergency"]
OnPreempt = Literal["resume", "restart", "drop"]

#: Arbitration order (DESIGN.md §8): a higher rank preempts a lower one at once.
RANK: dict[str, int] = {"normal": 0, "priority": 1, "emergency": 2}

BROADCAST_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$"
SHA256_PATTERN = r"^[0-9a-fA-F]{64}$"
#: The word that stands for every zone of the relay board.
ALL_ZONES = "all"


class UrlSource(EdgeModel):
    """An audio file fetched by URL into the device's cache and verified before it plays."""

    url: str = Field(min_length=1, max_length=2048, description="https:// (or allowed http://) URL of the file.")
    sha256: str = Field(pattern=SHA256_PATTERN, description="SHA-256 of the file, hex; a mismatch fails the item.")
    bytes: StrictInt = Field(gt=0, description="Size of the file in bytes; more bytes than this fail the item.")

    @field_validator("sha256")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.lower()

    @property
    def kind(self) -> str:
        return "file"


class TextSource(EdgeModel):
    """Vietnamese text spoken by the device's speech engine ([speech])."""

    text: str = Field(min_length=1, description="What to say; numbers, dates and abbreviations are read as words.")
    voice: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9._-]{1,64}$",
        description="Voice of the speech engine, e.g. 'vi-vn-x-south'; empty: the [speech] voice.",
    )

    @property
    def kind(self) -> str:
        return "text"


def _fallback_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        return "file" if "url" in value else "text" if "text" in value else None
    return getattr(value, "kind", None)


Fallback = Annotated[
    Annotated[UrlSource, Tag("file")] | Annotated[TextSource, Tag("text")],
    Discriminator(_fallback_kind, custom_error_type="source", custom_error_message="a fallback is a url or a text"),
]


class StreamSource(EdgeModel):
    """A live relay of the commune station's stream (HTTP/Icecast MP3 or Ogg/Opus)."""

    stream: str = Field(min_length=1, max_length=2048, description="http(s):// URL of the live stream.")
    fallback: Fallback = Field(description="Played while the stream is stalled: a file (url) or a text.")
    stall_s: StrictFloat = Field(
        default=5.0, ge=0.5, le=120, description="Seconds without audio from the stream before the fallback plays."
    )

    @property
    def kind(self) -> str:
        return "stream"


def _source_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        if "stream" in value:
            return "stream"
        return "file" if "url" in value else "text" if "text" in value else None
    return getattr(value, "kind", None)


Source = Annotated[
    Annotated[UrlSource, Tag("file")] | Annotated[TextSource, Tag("text")] | Annotated[StreamSource, Tag("stream")],
    Discriminator(
        _source_kind,
        custom_error_type="source",
        custom_error_message="a source is {url, sha256, bytes}, {text, voice} or {stream, fallback, stall_s}",
    ),
]


class PlayArgs(EdgeModel):
    """Arguments of ``broadcast.play`` (DESIGN.md §8)."""

    broadcast_id: str = Field(
        pattern=BROADCAST_ID_PATTERN,
        description="The server's id of this broadcast; a later play with the same id replaces this one.",
    )
    priority: Priority = Field(description="normal (scheduled), priority (ahead of the queue), emergency (at once).")
    zones: list[str] = Field(min_length=1, max_length=64, description="Zone names of the relay board, or ['all'].")
    source: Source = Field(description="What to play: a file by URL, a text to speak, or a live stream.")
    start_at: AwareDatetime | None = Field(
        default=None, description="Not before this time (ISO 8601 with its UTC offset); empty: at once."
    )
    not_after: AwareDatetime | None = Field(
        default=None, description="Never start after this time: past it the item is expired, not played late."
    )
    times: list[TimeOfDay] | None = Field(
        default=None,
        min_length=1,
        max_length=48,
        description="A programme: local times of day to play at, e.g. ['06:00', '17:00'].",
    )
    days: list[Weekday] | None = Field(
        default=None, min_length=1, description="Programme weekdays (mon..sun); empty: every day."
    )
    until: date | None = Field(default=None, description="Programme: last day it plays (inclusive); empty: no end.")
    repeat: StrictInt = Field(default=1, ge=1, le=20, description="How many times each occurrence plays.")
    gap_s: StrictFloat = Field(default=0.0, ge=0, le=3600, description="Seconds of silence between the repeats.")
    volume_db: StrictFloat = Field(
        default=0.0, ge=-60.0, le=0.0, description="Playback gain in dB (<= 0), capped by [broadcast]."
    )
    on_preempt: OnPreempt = Field(
        default="resume",
        description="When a higher priority cuts in: resume where cut, restart from the beginning, or drop.",
    )

    @field_validator("times")
    @classmethod
    def _local_times(cls, value: list[TimeOfDay] | None) -> list[TimeOfDay] | None:
        if value is None:
            return None
        if any(t.tzinfo is not None for t in value):
            raise ValueError("programme times are local times of day without an offset, e.g. '06:00'")
        if len(set(value)) != len(value):
            raise ValueError("a time is listed twice")
        return sorted(value)

    @field_validator("zones")
    @classmethod
    def _zone_words(cls, value: list[str]) -> list[str]:
        if ALL_ZONES in value and len(value) > 1:
            raise ValueError("'all' stands alone")
        if len(set(value)) != len(value):
            raise ValueError("a zone is listed twice")
        return value

    @model_validator(mode="after")
    def _times_fit(self) -> PlayArgs:
        if self.times is None and (self.days is not None or self.until is not None):
            raise ValueError("days and until belong to a programme: they need times")
        if self.start_at is not None and self.not_after is not None and self.not_after <= self.start_at:
            raise ValueError("not_after must be later than start_at")
        if self.start_at is not None and self.until is not None and self.until < self.start_at.date():
            raise ValueError("until is before start_at")
        return self

    @property
    def is_programme(self) -> bool:
        return self.times is not None


class PlayChecks(Protocol):
    """What a device checks in a ``broadcast.play`` beyond its shape (see :func:`bind_play_args`)."""

    def check_zones(self, zones: list[str]) -> list[str]:
        """The zones, if this device has them; raises ValueError naming an unknown one."""

    def check_source(self, source: UrlSource | TextSource | StreamSource) -> None:
        """Raises ValueError for a URL host not allowed, a file over the cap or a text over the length cap."""

    def now(self) -> datetime:
        """The device's wall clock (aware)."""


def bind_play_args(checks: PlayChecks) -> type[PlayArgs]:
    """A :class:`PlayArgs` that also checks ``broadcast.play`` against one device.

    Registered as the command's argument model, so a zone this loudspeaker does not have or a host it
    may not fetch from is ``invalid_args`` with its key path, like any other bad argument.
    """

    class DevicePlayArgs(PlayArgs):
        @field_validator("zones")
        @classmethod
        def _known_zones(cls, value: list[str]) -> list[str]:
            return checks.check_zones(value)

        @field_validator("source")
        @classmethod
        def _allowed_source(cls, value: UrlSource | TextSource | StreamSource) -> Any:
            checks.check_source(value)
            return value

        @field_validator("not_after")
        @classmethod
        def _not_past(cls, value: datetime | None) -> datetime | None:
            if value is not None and value <= checks.now():
                raise ValueError(f"{value.isoformat()} is already past")
            return value

        @field_validator("until")
        @classmethod
        def _not_over(cls, value: date | None) -> date | None:
            if value is not None and value < checks.now().date():
                raise ValueError(f"{value.isoformat()} is already past")
            return value

    DevicePlayArgs.__name__ = DevicePlayArgs.__qualname__ = "PlayArgs"
    return DevicePlayArgs


def bind_relay_test_args(checks: PlayChecks) -> type[RelayTestArgs]:
    """A :class:`RelayTestArgs` that checks the zones against one device."""

    class DeviceRelayTestArgs(RelayTestArgs):
        @field_validator("zones")
        @classmethod
        def _known_zones(cls, value: list[str] | None) -> list[str] | None:
            if value is not None and ALL_ZONES in value:
                raise ValueError("name the zones to test, or leave zones out for every zone")
            return None if value is None else checks.check_zones(value)

    DeviceRelayTestArgs.__name__ = DeviceRelayTestArgs.__qualname__ = "RelayTestArgs"
    return DeviceRelayTestArgs


class CancelArgs(EdgeModel):
    """Arguments of ``broadcast.cancel``."""

    broadcast_id: str = Field(pattern=BROADCAST_ID_PATTERN, description="The broadcast to cancel (and stop).")


class RelayTestArgs(EdgeModel):
    """Arguments of ``relay.test``."""

    zones: list[str] | None = Field(
        default=None, min_length=1, max_length=64, description="Zones to test, in this order; empty: every zone."
    )
    seconds: StrictFloat | None = Field(
        default=None, gt=0, le=30, description="Seconds of test tone per zone; empty: [broadcast] relay_test_s."
    )


# -- occurrences ---------------------------------------------------------------------------------


def next_occurrence(args: PlayArgs, after: datetime) -> datetime | None:
    """The programme's first occurrence at or after ``after`` (an aware local time), None if none is left.

    Times are local times of day in ``after``'s time zone (the device's; Vietnam keeps no daylight
    saving time, so a fixed offset is exact). ``start_at``, ``until`` and ``not_after`` bound it.
    """
    assert args.times is not None
    tz: tzinfo | None = after.tzinfo
    if args.start_at is not None and args.start_at > after:
        after = args.start_at.astimezone(tz)
    days = set(args.days) if args.days is not None else set(WEEKDAYS)
    day = after.date()
    for _ in range(8):  # a weekday set repeats within a week
        if args.until is not None and day > args.until:
            return None
        if WEEKDAYS[day.weekday()] in days:
            for t in args.times:
                when = datetime.combine(day, t, tzinfo=tz)
                if when >= after:
                    if args.not_after is not None and when > args.not_after:
                        return None
                    return when
        day += timedelta(days=1)
    return None


# -- the run-time item ---------------------------------------------------------------------------

#: Where the scheduler keeps an item: waiting for its turn, or on the air.
ItemState = Literal["scheduled", "playing"]


@dataclass
class Item:
    """One scheduled broadcast and where it stands. Mutated only under the scheduler's lock."""

    args: PlayArgs
    arrival: int
    """Order of arrival: equal priorities play in this order."""
    zones: tuple[str, ...]
    """The relay zones it plays on ('all' resolved)."""
    cmd_id: str | None = None
    state: ItemState = "scheduled"
    due: float | None = None
    """Unix time the next play may start; None when nothing is left to play."""
    deadline: float | None = None
    """Unix time after which the current occurrence is expired; None: no deadline."""
    occurrence: datetime | None = None
    """Programme: the local date and time the current occurrence is for."""
    play: int = 1
    """Which of the occurrence's ``repeat`` plays comes next (from 1)."""
    position_s: float = 0.0
    """Where in the source the next play starts (after a cut with on_preempt=resume)."""
    resuming: bool = False
    """The next play continues a cut one: its event is ``resumed``, not ``started``."""
    started_at: str | None = None
    """When the play on the air started (ISO), for the events of its end."""
    # Not persisted: found again after a restart.
    path: Path | None = None
    """The prepared audio file (fetched or rendered); None until ready, and for a stream."""
    fallback_path: Path | None = None
    sha256: str | None = None
    """SHA-256 of the prepared file (a text's rendered WAV too)."""
    ready: bool = False
    pins: list[str] = field(default_factory=list)
    """Cache entries pinned for it (released when it leaves the schedule)."""

    @property
    def broadcast_id(self) -> str:
        return self.args.broadcast_id

    @property
    def priority(self) -> Priority:
        return self.args.priority

    @property
    def rank(self) -> int:
        return RANK[self.args.priority]

    @property
    def order(self) -> tuple[int, int]:
        """Sort key of arbitration: highest priority first, then first come."""
        return (-self.rank, self.arrival)

    @property
    def kind(self) -> str:
        return self.args.source.kind

    def outranks(self, other: Item) -> bool:
        """Whether this item preempts ``other`` (strictly higher priority; equals queue)."""
        return self.rank > other.rank

    def is_due(self, now: float) -> bool:
        return self.due is not None and self.due <= now

    def is_late(self, now: float) -> bool:
        return self.deadline is not None and now > self.deadline


def first_occurrence(
    args: PlayArgs, now: datetime, grace_s: float
) -> tuple[float | None, float | None, datetime | None]:
    """``(due, deadline, occurrence)`` of a new item's first occurrence."""
    if args.is_programme:
        when = next_occurrence(args, now)
        if when is None:
            return None, None, None
        return when.timestamp(), occurrence_deadline(args, when, grace_s), when
    due = args.start_at.timestamp() if args.start_at is not None else now.timestamp()
    return due, args.not_after.timestamp() if args.not_after is not None else None, None


def occurrence_deadline(args: PlayArgs, when: datetime, grace_s: float) -> float:
    """A programme occurrence must start within ``grace_s`` of its time, and never after not_after."""
    deadline = when.timestamp() + grace_s
    if args.not_after is not None:
        deadline = min(deadline, args.not_after.timestamp())
    return deadline


def gain_db(volume_db: float, zones: Sequence[str], global_cap_db: float, zone_caps: dict[str, float]) -> float:
    """The gain an item plays at: what it asks for, capped globally and by the tightest of its zones."""
    caps = [global_cap_db, *(zone_caps[z] for z in zones if z in zone_caps)]
    return min(volume_db, *caps)


def iso(ts: float | None, tz: tzinfo | None) -> str | None:
    """A Unix time as ISO 8601 in the device's zone, milliseconds (as event time stamps are)."""
    if ts is None or not math.isfinite(ts):
        return None
    return datetime.fromtimestamp(ts, tz).isoformat(timespec="milliseconds")


Clock = Callable[[], datetime]


def system_clock() -> datetime:
    """The wall clock in the device's time zone."""
    return datetime.now().astimezone()
