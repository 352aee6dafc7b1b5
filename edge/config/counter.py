"""``[panel]`` and ``[rating]``: the counter's rating panel and how ratings are taken."""

from __future__ import annotations

from datetime import time as TimeOfDay
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from edge.config.profile_checks import checked_field, checked_profile
from edge.model import EdgeModel, Slug

Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
TtsVoice = Literal["vi", "vi-vn-x-central", "vi-vn-x-south"]


class PanelConfig(EdgeModel):
    """The rating panel: which hardware profile, and where a serial panel is plugged in."""

    profile: str = Field(
        description="Hardware profile: a name from firmware_config/ (gpio-4btn-rpi, serial-4btn, ...) or a "
        "path to a profile YAML file.",
    )
    port: str | None = Field(
        default=None,
        validate_default=True,
        description="Serial panels only: the device path (prefer /dev/serial/by-id/...) or usb:VID:PID; "
        "empty: found by the profile's USB id.",
    )

    @field_validator("profile")
    @classmethod
    def _profile_checks(cls, value: str) -> str:
        from drivers.profiles import check_panel  # drivers import the config's base model, not the reverse

        return checked_profile(value, check_panel(value), other_fields=("port",))

    @field_validator("port")
    @classmethod
    def _port_checks(cls, value: str | None, info: ValidationInfo) -> str | None:
        from drivers.profiles import check_panel

        profile = info.data.get("profile")
        if profile is None:
            return value  # the profile is broken; that is reported under panel.profile
        return checked_field(value, check_panel(profile, value), "port")


class OfficerShift(EdgeModel):
    """One officer's regular hours at this counter."""

    officer: Slug = Field(description="Officer id recorded with ratings, e.g. 'nv-07'.")
    days: list[Weekday] = Field(
        default_factory=lambda: list(WEEKDAYS[:5]),
        min_length=1,
        description="Weekdays of the shift (mon, tue, wed, thu, fri, sat, sun).",
    )
    start: TimeOfDay = Field(description="Local time the shift starts, e.g. '07:30'.")
    end: TimeOfDay = Field(description="Local time the shift ends (exclusive), e.g. '11:30'.")

    @model_validator(mode="after")
    def _start_before_end(self) -> OfficerShift:
        if self.end <= self.start:
            raise ValueError(f"end {self.end:%H:%M} must be after start {self.start:%H:%M}")
        return self

    def covers(self, day: Weekday, at: TimeOfDay) -> bool:
        """Whether this shift is on at local weekday ``day`` and time ``at``."""
        return day in self.days and self.start <= at < self.end


class RatingFeedbackConfig(EdgeModel):
    """What the citizen sees and hears once the rating is safe on disk."""

    led: bool = Field(default=True, description="Blink the pressed button's LED (the profile's thank-you pattern).")
    beep_ms: int = Field(default=120, ge=0, le=5000, description="Buzzer beep length in ms; 0: no beep.")
    speak: bool = Field(default=True, description="Say the thank-you text through the counter speaker.")
    text: str = Field(
        default="Cảm ơn quý khách đã đánh giá.",
        min_length=1,
        max_length=200,
        description="The spoken thank-you, in Vietnamese.",
    )
    voice: TtsVoice = Field(
        default="vi", description="espeak-ng voice: vi (northern), vi-vn-x-central or vi-vn-x-south."
    )
    speed_wpm: int = Field(default=150, ge=80, le=400, description="Speaking speed, words per minute.")
    audio_device: str | None = Field(
        default=None,
        description="Output device for the speaker (a sounddevice name or index); empty: the system default.",
    )


class RatingConfig(EdgeModel):
    """How ratings are taken at this counter: windows, misuse rules, officers, feedback."""

    counter: Slug | None = Field(
        default=None, description="Counter id recorded with every rating, e.g. 'q1'; empty: the device id."
    )
    mode: Literal["officer", "always"] = Field(
        default="officer",
        description="officer: a rating window opens when the officer presses done (or rating.open arrives) "
        "and closes at the first press or the timeout; always: always open, one vote per cooldown.",
    )
    window_s: float = Field(
        default=30.0, ge=1, le=3600, description="Officer mode: seconds a rating window stays open."
    )
    cooldown_s: float = Field(
        default=10.0, ge=0, le=3600, description="Always mode: presses this soon after a vote are flagged."
    )
    burst_presses: int = Field(
        default=3, ge=2, le=50, description="This many presses within burst_window_s are flagged as a burst."
    )
    burst_window_s: float = Field(default=2.0, gt=0, le=600, description="The burst rule's time span, seconds.")
    stuck_after_s: float | None = Field(
        default=None,
        gt=0,
        le=3600,
        description="A button held this long is reported stuck; empty: the profile's value.",
    )
    roster: list[OfficerShift] = Field(
        default_factory=list,
        description="Who serves at this counter when, e.g. [{officer = 'nv-07', start = '07:30', end = '11:30'}]; "
        "an officer.assign command overrides it.",
    )
    feedback: RatingFeedbackConfig = Field(
        default_factory=RatingFeedbackConfig, description="Thank-you light, beep and voice."
    )

    @field_validator("roster")
    @classmethod
    def _no_overlapping_shifts(cls, value: list[OfficerShift]) -> list[OfficerShift]:
        clashes = []
        for i, a in enumerate(value):
            for j in range(i):
                b = value[j]
                days = [d for d in WEEKDAYS if d in a.days and d in b.days]
                if days and a.start < b.end and b.start < a.end and a.officer != b.officer:
                    clashes.append(
                        f"[{i}] ({a.officer}) overlaps [{j}] ({b.officer}) on {days[0]}: "
                        "one counter, one officer at a time"
                    )
        if clashes:
            raise ValueError("; ".join(clashes))
        return value
