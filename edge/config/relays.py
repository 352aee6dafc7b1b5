"""``[relays]``: the loudspeaker's relay board (amplifier power and zones)."""

from __future__ import annotations

from pydantic import Field, ValidationInfo, field_validator

from edge.config.profile_checks import checked_field, checked_profile
from edge.model import EdgeModel


class RelaysConfig(EdgeModel):
    """The relay board: which hardware profile, and where a USB/serial board is plugged in."""

    profile: str = Field(
        description="Relay board profile: a name from firmware_config/relays/ (gpio-4ch-rpi, lcus-4ch, modbus-8ch) "
        "or a path to a profile YAML file. The profile names the zones and sets warm-up, idle and maximum on-time.",
    )
    port: str | None = Field(
        default=None,
        validate_default=True,
        description="USB/serial boards only: the device path (prefer /dev/serial/by-id/...) or usb:VID:PID; "
        "empty: found by the profile's USB id.",
    )
    modbus_unit: int | None = Field(
        default=None,
        ge=1,
        le=247,
        description="Modbus boards only: the board's unit id, if not the profile's (set on the board, often 1).",
    )
    probe_s: float = Field(
        default=30.0,
        ge=1.0,
        le=3600.0,
        description="Boards that read back their state (readback: true) are read this often while nothing "
        "plays, so that a board that stopped answering shows in edge status before an item needs it.",
    )

    @field_validator("profile")
    @classmethod
    def _profile_checks(cls, value: str) -> str:
        from drivers.relay.profile import check_relays  # drivers import the config's base model, not the reverse

        return checked_profile(value, check_relays(value), other_fields=("port", "modbus_unit"))

    @field_validator("port")
    @classmethod
    def _port_checks(cls, value: str | None, info: ValidationInfo) -> str | None:
        from drivers.relay.profile import check_relays

        profile = info.data.get("profile")
        if profile is None:
            return value  # the profile is broken; that is reported under relays.profile
        return checked_field(value, check_relays(profile, value), "port")

    @field_validator("modbus_unit")
    @classmethod
    def _unit_checks(cls, value: int | None, info: ValidationInfo) -> int | None:
        from drivers.relay.profile import check_relays

        profile = info.data.get("profile")
        if profile is None or value is None:
            return value
        return checked_field(value, check_relays(profile, info.data.get("port"), value), "modbus_unit")
