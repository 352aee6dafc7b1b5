"""``[relays]``: the loudspeaker's relay board (amplifier power and zones)."""

from __future__ import annotations

from pydantic import Field, ValidationInfo, field_validator

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

    @field_validator("profile")
    @classmethod
    def _profile_checks(cls, value: str) -> str:
        from drivers.relay.profile import check_relays  # drivers import the config's base model, not the reverse

        found = [(key, msg) for key, msg in check_relays(value) if key not in ("port", "modbus_unit")]
        if found:
            raise ValueError("; ".join(msg if key == "profile" else f"{key}: {msg}" for key, msg in found))
        return value

    @field_validator("port")
    @classmethod
    def _port_checks(cls, value: str | None, info: ValidationInfo) -> str | None:
        from drivers.relay.profile import check_relays

        profile = info.data.get("profile")
        if profile is None:
            return value  # the profile is broken; that is reported under relays.profile
        found = [msg for key, msg in check_relays(profile, value) if key == "port"]
        if found:
            raise ValueError("; ".join(found))
        return value

    @field_validator("modbus_unit")
    @classmethod
    def _unit_checks(cls, value: int | None, info: ValidationInfo) -> int | None:
        from drivers.relay.profile import check_relays

        profile = info.data.get("profile")
        if profile is None or value is None:
            return value
        found = [msg for key, msg in check_relays(profile, info.data.get("port"), value) if key == "modbus_unit"]
        if found:
            raise ValueError("; ".join(found))
        return value
