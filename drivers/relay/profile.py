"""Relay board profiles (``firmware_config/relays/*.yaml``): what is wired to which relay.

A loudspeaker's relay board switches the amplifier's mains power and the zones (groups of horns). A
profile names the board's kind and, for each relay, where it is: a GPIO pin (``kind: gpio``), a
channel of an LCUS/CH340 USB board (``kind: lcus``) or a coil of a Modbus RTU board (``kind: modbus``).
It also holds the timing of the relay sequence (DESIGN.md §8): the amplifier's warm-up, how long it
stays warm between items, and the maximum on-time after which every relay is opened as a safety net.

Validation has the panel profiles' two layers: pydantic checks each value, then
:func:`relay_profile_problems` checks what needs the whole profile or the board's pin table (a pin,
channel or coil used twice, two zones with one name, a pin not on the header). Every error carries a
key path (``zones[1].pin``).

Use :func:`load_relay_profile` to read a profile by name or path, and :func:`check_relays` from the
config layer to validate a ``[relays]`` section without opening any hardware.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field

from drivers.profiles import (
    MODEL_ID,
    PinSpec,
    ProfileModel,
    UsbId,
    firmware_config_dir,
    gpio_pin_problems,
    in_profile,
    read_profile_data,
    section_port_problems,
    section_profile,
    validate_profile,
)
from drivers.resources import Resources
from edge.model import EdgeModel, Slug

#: The amplifier's name among the relays (``RelayBank.states()`` keys, ``on_change`` names).
AMPLIFIER = "amplifier"

#: Names a zone cannot have: the amplifier's, and the word broadcast commands use for every zone.
RESERVED_ZONE_NAMES = frozenset({AMPLIFIER, "all"})

#: Coils one Modbus "read coils" request may cover (the protocol's limit); read-back reads them in one span.
MAX_READ_COILS = 2000

_BAUD_RATES = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)


def _standard_baud(value: int) -> int:
    if value not in _BAUD_RATES:
        raise ValueError(f"baudrate must be one of {', '.join(map(str, _BAUD_RATES))}")
    return value


#: A serial speed the relay boards (and their USB adapters) can be set to.
BaudRate = Annotated[int, AfterValidator(_standard_baud)]


def relay_profile_dir() -> Path:
    """Where relay profiles live: ``firmware_config/relays/``."""
    return firmware_config_dir() / "relays"


def list_relay_profiles() -> list[str]:
    """Names of the shipped relay profiles (file stems in ``firmware_config/relays/``)."""
    return sorted(p.stem for p in relay_profile_dir().glob("*.yaml"))


# -- relays ----------------------------------------------------------------------------------------


class GpioRelay(EdgeModel):
    """A relay driven by one GPIO pin (through the relay module's transistor or optocoupler)."""

    pin: PinSpec = Field(description="the GPIO driving the relay's input (BCM number, e.g. 17 or 'GPIO17')")
    active_high: bool | None = Field(
        default=None, description="the relay closes when the pin is high; empty: the profile's active_high"
    )


class GpioZone(GpioRelay):
    """A zone relay on a GPIO pin."""

    name: Slug = Field(description="the zone's name in broadcast commands, e.g. 'zone-1' or 'cho' (a slug)")


class LcusRelay(EdgeModel):
    """A channel of an LCUS/CH340 USB relay board."""

    channel: int = Field(ge=1, le=16, description="the board's channel number, from 1 (the A0 frame's second byte)")


class LcusZone(LcusRelay):
    """A zone relay on an LCUS board channel."""

    name: Slug = Field(description="the zone's name in broadcast commands, e.g. 'zone-1' or 'cho' (a slug)")


class ModbusRelay(EdgeModel):
    """A coil of a Modbus RTU relay board."""

    coil: int = Field(ge=0, le=0xFFFF, description="the coil address (0-based, as on the wire) that drives the relay")


class ModbusZone(ModbusRelay):
    """A zone relay on a Modbus coil."""

    name: Slug = Field(description="the zone's name in broadcast commands, e.g. 'zone-1' or 'cho' (a slug)")


# -- profiles --------------------------------------------------------------------------------------


class _RelayProfileBase(ProfileModel):
    model: str = Field(pattern=MODEL_ID, description="relay board model id, e.g. 'lcus-4'")
    description: str = Field(default="", description="what this profile is for, in a sentence")
    warm_up_s: float = Field(
        default=2.0,
        ge=0,
        le=60,
        description="seconds between switching the amplifier on and the first sound (skipped when already warm)",
    )
    idle_off_s: float = Field(
        default=10.0,
        ge=0,
        le=3600,
        description="seconds the amplifier stays on after an item, so the next item needs no warm-up",
    )
    max_on_s: float = Field(
        default=7200.0,
        gt=0,
        le=86400,
        description="safety net: the amplifier on this long without a break opens every relay, whatever the "
        "scheduler is doing",
    )
    readback: bool = Field(default=False, description="the board can report its relays' states, and is asked")

    @property
    def zone_names(self) -> tuple[str, ...]:
        """The zones' names, in profile order."""
        return tuple(z.name for z in self.zones)  # type: ignore[attr-defined]

    @property
    def relay_names(self) -> tuple[str, ...]:
        """``"amplifier"`` and then every zone's name."""
        return (AMPLIFIER, *self.zone_names)

    def relays(self) -> Iterator[tuple[str, str, Any]]:
        """``(name, key_path, spec)`` for the amplifier and then each zone."""
        yield AMPLIFIER, AMPLIFIER, self.amplifier  # type: ignore[attr-defined]
        for i, zone in enumerate(self.zones):  # type: ignore[attr-defined]
            yield zone.name, f"zones[{i}]", zone


class GpioRelayProfile(_RelayProfileBase):
    """Relay modules wired to the Raspberry Pi's GPIO header, one pin per relay."""

    kind: Literal["gpio"] = Field(description="gpio: one GPIO pin per relay")
    board: str = Field(
        default="rpi-40pin", description="pin table in firmware_config/boards/ the pins are checked against"
    )
    active_high: bool = Field(
        description="the relays close when their pin is high. Most opto-isolated modules close on low (false). "
        "No default: a wrong guess closes every relay at boot"
    )
    readback: bool = Field(
        default=False,
        description="read the pins' levels back through the pin factory (shows what the Pi drives, not the contacts)",
    )
    amplifier: GpioRelay = Field(description="the relay switching the amplifier's power")
    zones: list[GpioZone] = Field(min_length=1, max_length=26, description="the zone relays, each with a name")

    def relay_active_high(self, relay: GpioRelay) -> bool:
        """Whether ``relay`` closes on a high pin (its own setting, else the profile's)."""
        return self.active_high if relay.active_high is None else relay.active_high


class LcusRelayProfile(_RelayProfileBase):
    """An LCUS-type USB relay board (CH340 serial chip): frames ``A0 <channel> <state> <sum>``."""

    kind: Literal["lcus"] = Field(description="lcus: LCUS/CH340 USB relay board, A0 frames at 9600 baud")
    usb: UsbId | None = Field(
        default=None,
        description="USB id to find the board by when no port is configured, e.g. '1a86:7523' (every CH340 has it)",
    )
    baudrate: BaudRate = Field(default=9600, description="serial speed; the boards use 9600")
    readback: bool = Field(
        default=False,
        description="the board answers the status query 0xFF with 'CH1: ON' / 'CH1: OFF' lines (most cannot)",
    )
    command_gap_ms: int = Field(
        default=50,
        ge=0,
        le=1000,
        description="pause after each frame: the board's microcontroller misses a frame that arrives while it "
        "is still switching",
    )
    reply_timeout_s: float = Field(
        default=0.5, gt=0, le=10, description="readback: how long to wait for the answer to the status query"
    )
    amplifier: LcusRelay = Field(description="the channel switching the amplifier's power")
    zones: list[LcusZone] = Field(min_length=1, max_length=15, description="the zone channels, each with a name")


class ModbusRelayProfile(_RelayProfileBase):
    """A Modbus RTU relay board on RS-485 (through a USB adapter): one coil per relay."""

    kind: Literal["modbus"] = Field(description="modbus: Modbus RTU relay board, coils written with function 05")
    usb: UsbId | None = Field(
        default=None, description="USB id of the RS-485 adapter to find when no port is configured"
    )
    unit: int = Field(default=1, ge=1, le=247, description="the board's Modbus unit (slave) id")
    baudrate: BaudRate = Field(default=9600, description="serial speed, as set on the board")
    parity: Literal["N", "E", "O"] = Field(default="N", description="parity: N (none), E (even) or O (odd)")
    stopbits: Literal[1, 2] = Field(default=1, description="stop bits: 1 or 2")
    timeout_s: float = Field(default=0.5, gt=0, le=10, description="how long to wait for each answer")
    retries: int = Field(default=1, ge=0, le=5, description="requests sent again after a timeout before giving up")
    readback: bool = Field(
        default=True, description="read the coils back (function 01) after switching, to confirm the board did it"
    )
    amplifier: ModbusRelay = Field(description="the coil switching the amplifier's power")
    zones: list[ModbusZone] = Field(min_length=1, max_length=63, description="the zone coils, each with a name")


RelayProfile = GpioRelayProfile | LcusRelayProfile | ModbusRelayProfile
SerialRelayProfile = LcusRelayProfile | ModbusRelayProfile

_KINDS: dict[str, type[GpioRelayProfile] | type[LcusRelayProfile] | type[ModbusRelayProfile]] = {
    "gpio": GpioRelayProfile,
    "lcus": LcusRelayProfile,
    "modbus": ModbusRelayProfile,
}


# -- checks that need the whole profile ------------------------------------------------------------


def relay_profile_problems(
    profile: RelayProfile, *, resources: Resources | None = None, holder_prefix: str = ""
) -> list[tuple[str, str]]:
    """Check what pydantic cannot see field by field; return ``(key_path, message)`` pairs.

    GPIO pins are reserved in ``resources`` (a private registry if none) under ``holder_prefix +
    key_path``, so a pin used twice names both key paths, and a clash with another section of the
    config names that section's key path (``GPIO 17 is used by panel.buttons[0].pin``).
    """
    found: list[tuple[str, str]] = []
    first_zone: dict[str, int] = {}
    for i, name in enumerate(profile.zone_names):
        if name in RESERVED_ZONE_NAMES:
            found.append((f"zones[{i}].name", f"{name!r} cannot name a zone (it means something else)"))
        elif name in first_zone:
            found.append((f"zones[{i}].name", f"{name} is also the name of zones[{first_zone[name]}]"))
        first_zone.setdefault(name, i)
    if profile.max_on_s <= profile.warm_up_s + profile.idle_off_s:
        found.append(
            (
                "max_on_s",
                f"{profile.max_on_s:g} s must be longer than warm_up_s + idle_off_s "
                f"({profile.warm_up_s + profile.idle_off_s:g} s), or the safety cut ends normal use",
            )
        )

    if isinstance(profile, GpioRelayProfile):
        pins = ((f"{path}.pin", spec.pin, False) for _, path, spec in profile.relays())
        return found + gpio_pin_problems(profile.board, pins, resources=resources, holder_prefix=holder_prefix)

    attr = "channel" if isinstance(profile, LcusRelayProfile) else "coil"
    first_use: dict[int, str] = {}
    for _, path, spec in profile.relays():
        number = getattr(spec, attr)
        if number in first_use:
            found.append((f"{path}.{attr}", f"{attr} {number} is also used by {first_use[number]}"))
        first_use.setdefault(number, path)
    if isinstance(profile, ModbusRelayProfile) and profile.readback:
        span = max(first_use) - min(first_use) + 1
        if span > MAX_READ_COILS:
            found.append(("readback", f"the coils span {span} addresses; one read covers at most {MAX_READ_COILS}"))
    return found


def parse_relay_profile(data: Any, source: str = "") -> RelayProfile:
    """Validate relay profile data (as loaded from YAML). Raises :exc:`BadProfile` listing every problem."""
    return validate_profile(data, source, _KINDS, relay_profile_problems)


def load_relay_profile(name_or_path: str | Path) -> RelayProfile:
    """Load and validate a relay profile by name (``firmware_config/relays/``) or path.

    Raises :exc:`BadProfile` with key-path problems.
    """
    data, source = read_profile_data(name_or_path, relay_profile_dir())
    return parse_relay_profile(data, source=source)


def with_unit(profile: RelayProfile, modbus_unit: int | None) -> RelayProfile:
    """The profile with its Modbus unit id replaced (a ``[relays] modbus_unit`` setting); others unchanged."""
    if modbus_unit is None or not isinstance(profile, ModbusRelayProfile):
        return profile
    copy = profile.model_copy(update={"unit": modbus_unit})
    copy._source = profile.source
    return copy


def check_relays(
    profile: str,
    port: str | None = None,
    modbus_unit: int | None = None,
    *,
    resources: Resources | None = None,
    prefix: str = "relays",
) -> list[tuple[str, str]]:
    """Validate a ``[relays]`` config section without opening hardware; return ``(key_path, message)`` pairs.

    Key paths are relative to the section (``profile``, ``port``, ``modbus_unit``, or a key inside the
    profile such as ``zones[0].pin``): the config layer prefixes ``relays.``. Problems inside the
    profile file name the file in the message. Pins and the port are reserved in ``resources`` under
    ``prefix``-qualified holders, so a clash with another section reads
    ``zones[0].pin: GPIO 17 is used by panel.buttons[0].pin``.
    """
    prof, found = section_profile(load_relay_profile, profile)
    if prof is None:
        return found
    holder = f"{prefix}." if prefix else ""
    if resources is not None:
        found += in_profile(relay_profile_problems(prof, resources=resources, holder_prefix=holder), prof.source)
    if modbus_unit is not None and not isinstance(prof, ModbusRelayProfile):
        found.append(("modbus_unit", f"only Modbus relay boards have a unit id ({prof.kind} board); remove it"))
    usb = None if isinstance(prof, GpioRelayProfile) else prof.usb
    return found + section_port_problems(
        "relay board",
        port,
        serial=not isinstance(prof, GpioRelayProfile),
        usb=usb,
        resources=resources,
        holder=f"{holder}port",
    )
