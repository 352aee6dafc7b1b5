"""Hardware profiles for rating panels (``firmware_config/*.yaml``), in the spirit of ESPHome.

The pin, board-table, port and file helpers here, and the loader (:func:`read_profile_data`,
:func:`validate_profile`, :func:`section_profile`), are shared with the relay board profiles
(:mod:`drivers.relay.profile`, ``firmware_config/relays/``) and the camera profiles
(:mod:`drivers.camera.profile`, ``firmware_config/cameras/``).

A profile says what is wired where: which buttons exist, which score, machine label and Vietnamese
text each one stands for, and either the GPIO pins (``kind: gpio``) or the serial microcontroller's
identity and settings (``kind: serial``). Shorthand is normalised (``pin: 17`` → ``{number: 17}``),
unknown keys are errors, and every error carries a key path (``buttons[2].pin``).

Validation has two layers: pydantic checks the shape of each value; :func:`profile_problems` then
checks what needs the whole profile or the board's pin table (a pin used twice, a pin that is not on
the header, a reserved pin, two buttons with one label).

Use :func:`load_profile` to read a profile by name or path, and :func:`check_panel` from the config
layer to validate a ``[panel]`` section (profile + port) without opening any hardware.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import Field, PrivateAttr, ValidationError, field_validator, model_validator

from drivers.resources import Resources
from edge.exceptions import BadProfile, ResourceBusy
from edge.model import EdgeModel, problems

log = logging.getLogger(__name__)

RatingLabel = Literal["very_satisfied", "satisfied", "neutral", "dissatisfied", "very_dissatisfied"]

#: The standard Vietnamese text for each label, used when a button gives none.
DEFAULT_TEXT: dict[str, str] = {
    "very_satisfied": "Rất hài lòng",
    "satisfied": "Hài lòng",
    "neutral": "Bình thường",
    "dissatisfied": "Không hài lòng",
    "very_dissatisfied": "Rất không hài lòng",
}

ENV_DIR = "COMMUNE_EDGE_FIRMWARE_CONFIG"

#: A profile's model id; for serial panels, the HELLO model token of PROTOCOL.md.
MODEL_ID = r"^[A-Za-z0-9._+-]{1,32}$"
_VERSION = r"^[0-9]+(\.[0-9]+){0,3}$"
_PIN_NAME = re.compile(r"(?:GPIO|BCM)?\s*([0-9]{1,2})", re.IGNORECASE)


# -- where profiles live ---------------------------------------------------------------------------


def firmware_config_dir() -> Path:
    """The ``firmware_config`` directory.

    It is not a Python package, so it is found next to the source tree (``drivers/..``), or where an
    installation put it (``$prefix/share/commune-edge/firmware_config``); ``$COMMUNE_EDGE_FIRMWARE_CONFIG``
    overrides both.
    """
    env = os.environ.get(ENV_DIR)
    if env:
        return Path(env)
    candidates = [
        Path(__file__).resolve().parents[1] / "firmware_config",
        Path(sys.prefix) / "share" / "commune-edge" / "firmware_config",
    ]
    for cand in candidates:
        if cand.is_dir():
            return cand
    return candidates[0]


def list_profiles() -> list[str]:
    """Names of the shipped profiles (file stems in ``firmware_config/``)."""
    return sorted(p.stem for p in firmware_config_dir().glob("*.yaml"))


# -- pins ------------------------------------------------------------------------------------------


class PinSpec(EdgeModel):
    """A GPIO pin by BCM number. Shorthand: ``17``, ``"GPIO17"`` or ``"BCM17"`` → ``{number: 17}``."""

    number: int = Field(ge=0, le=63, description="BCM GPIO number (GPIO17 is 17; not the header pin number)")
    allow_special: bool = Field(
        default=False,
        description="use a pin the board table marks special (I²C pull-ups, the UART console) on purpose",
    )

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, bool):
            raise ValueError("a pin is a BCM number such as 17 or 'GPIO17'")
        if isinstance(data, int):
            return {"number": data}
        if isinstance(data, str):
            m = _PIN_NAME.fullmatch(data.strip())
            if not m:
                raise ValueError(f"{data!r} is not a pin: use a BCM number such as 17 or 'GPIO17'")
            return {"number": int(m.group(1))}
        return data


class InputPin(PinSpec):
    """A pin read by a push button."""

    pull_up: bool = Field(
        default=True,
        description="enable the internal pull-up: the switch connects the pin to ground (active low)",
    )
    shared: bool = Field(default=False, description="inputs cannot be shared; present only to explain why")

    @field_validator("shared")
    @classmethod
    def _not_shared(cls, value: bool) -> bool:
        if value:
            raise ValueError("a button's pin cannot be shared: only one device can read it")
        return value


class OutputPin(PinSpec):
    """A pin driving an LED, an LED ring or a buzzer."""

    active_high: bool = Field(default=True, description="the load is on when the pin is high (false: sinks current)")
    shared: bool = Field(
        default=False,
        description="allow other users of this pin (e.g. one LED for several buttons); every user must say so",
    )


# -- buttons ---------------------------------------------------------------------------------------


class ButtonSpec(EdgeModel):
    """One rating button. Buttons are numbered from 1 in the order listed."""

    score: int = Field(ge=1, le=10, description="the score recorded for a press (higher is better)")
    label: RatingLabel = Field(description="machine label recorded with the rating")
    text: str = Field(
        default="",
        max_length=64,
        description="Vietnamese text shown and spoken for this button; defaults to the label's standard text",
    )

    @model_validator(mode="after")
    def _default_text(self) -> ButtonSpec:
        if not self.text:
            self.text = DEFAULT_TEXT[self.label]
        return self


class GpioButton(ButtonSpec):
    """A rating button wired to a GPIO pin, with an optional LED of its own."""

    pin: InputPin = Field(description="the button's input pin")
    led: OutputPin | None = Field(default=None, description="the LED in or beside this button")


class ThanksPattern(EdgeModel):
    """The thank-you light: the pressed button's LED (or the ring) blinks a few times."""

    blinks: int = Field(default=3, ge=1, le=20, description="number of blinks")
    on_ms: int = Field(default=150, ge=10, le=5000, description="milliseconds on per blink")
    off_ms: int = Field(default=150, ge=10, le=5000, description="milliseconds off per blink")


class UsbId(EdgeModel):
    """A USB serial adapter by vendor and product id. Shorthand: ``"1a86:7523"``."""

    vid: int = Field(ge=0, le=0xFFFF, description="USB vendor id")
    pid: int = Field(ge=0, le=0xFFFF, description="USB product id")
    serial_number: str | None = Field(
        default=None, description="the adapter's serial number, if several are plugged in"
    )

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, str):
            return parse_usb_id(data)
        return data

    def __str__(self) -> str:
        tail = f":{self.serial_number}" if self.serial_number else ""
        return f"usb:{self.vid:04x}:{self.pid:04x}{tail}"


def parse_usb_id(text: str) -> dict[str, Any]:
    """``"1a86:7523"``, ``"usb:1a86:7523"`` or ``"usb:1a86:7523:SERIAL"`` → fields of :class:`UsbId`."""
    parts = text.removeprefix("usb:").split(":", 2)
    try:
        if len(parts) < 2:
            raise ValueError
        vid, pid = int(parts[0], 16), int(parts[1], 16)
    except ValueError:
        raise ValueError(f"{text!r} is not a USB id: use VID:PID in hex, e.g. 1a86:7523") from None
    return {"vid": vid, "pid": pid, "serial_number": parts[2] if len(parts) > 2 else None}


class FirmwareRange(EdgeModel):
    """Which firmware versions (HELLO ``fw=``) this profile was written for."""

    min: Annotated[str, Field(pattern=_VERSION)] = Field(
        default="1.0", description="oldest accepted version (inclusive)"
    )
    below: Annotated[str, Field(pattern=_VERSION)] | None = Field(
        default=None, description="first version no longer accepted (exclusive); none means no upper bound"
    )

    def accepts(self, fw: str) -> bool:
        """Whether a HELLO ``fw`` value is in range. A version with a suffix (``1.2.0-rc1``) uses its numbers."""
        have = version_tuple(fw)
        if have is None:
            return False
        if have < (version_tuple(self.min) or ()):
            return False
        return self.below is None or have < (version_tuple(self.below) or ())

    def __str__(self) -> str:
        return f">={self.min}" + (f",<{self.below}" if self.below else "")


def version_tuple(text: str) -> tuple[int, ...] | None:
    """``"1.2.3-rc1"`` → ``(1, 2, 3)``; None if it does not start with a number. Trailing zeros dropped."""
    m = re.match(r"[0-9]+(\.[0-9]+)*", text)
    if not m:
        return None
    nums = [int(p) for p in m.group(0).split(".")]
    while len(nums) > 1 and nums[-1] == 0:
        nums.pop()
    return tuple(nums)


# -- profiles --------------------------------------------------------------------------------------


class ProfileModel(EdgeModel):
    """A hardware profile of any kind (panel, relay board, camera): it remembers where it was read from."""

    _source: str = PrivateAttr("")

    @property
    def source(self) -> str:
        """Where the profile came from (file path or name); empty for profiles built in code."""
        return self._source


class _ProfileBase(ProfileModel):
    model: str = Field(pattern=MODEL_ID, description="panel model id (for serial panels: HELLO model=)")
    description: str = Field(default="", description="what this profile is for, in a sentence")

    @property
    def button_count(self) -> int:
        """Number of rating buttons."""
        return len(self.buttons)  # type: ignore[attr-defined]

    def button(self, number: int) -> ButtonSpec:
        """The button numbered ``number`` (1-based, as in presses and the protocol)."""
        buttons: list[ButtonSpec] = self.buttons  # type: ignore[attr-defined]
        if not 1 <= number <= len(buttons):
            raise IndexError(f"button {number} is not on this panel (1..{len(buttons)})")
        return buttons[number - 1]


class GpioProfile(_ProfileBase):
    """A panel wired straight to the Raspberry Pi's GPIO header."""

    kind: Literal["gpio"] = Field(description="gpio: buttons and LEDs on the Pi's own pins")
    board: str = Field(
        default="rpi-40pin", description="pin table in firmware_config/boards/ the pins are checked against"
    )
    buttons: list[GpioButton] = Field(min_length=1, max_length=16, description="rating buttons, button 1 first")
    debounce_ms: int = Field(
        default=30, ge=0, le=1000, description="ignore contact bounce for this long after a change"
    )
    stuck_after_s: float = Field(
        default=10.0, gt=0, le=3600, description="a button held longer than this is reported stuck (and not counted)"
    )
    ring: OutputPin | None = Field(
        default=None, description="one LED or LED ring for the whole panel (thank-you light)"
    )
    buzzer: OutputPin | None = Field(default=None, description="an active buzzer (on/off, no tone control)")
    done_button: InputPin | None = Field(
        default=None, description="the officer's 'done' button that opens a rating window (officer mode)"
    )
    thanks: ThanksPattern = Field(default_factory=lambda: ThanksPattern(), description="the thank-you blink pattern")

    def pins(self) -> Iterator[tuple[str, PinSpec]]:
        """Every pin with its key path, in profile order."""
        for i, b in enumerate(self.buttons):
            yield f"buttons[{i}].pin", b.pin
            if b.led is not None:
                yield f"buttons[{i}].led", b.led
        for name in ("ring", "buzzer", "done_button"):
            pin = getattr(self, name)
            if pin is not None:
                yield name, pin


class SerialProfile(_ProfileBase):
    """A panel with its own microcontroller speaking PROTOCOL.md over a (USB) serial port."""

    kind: Literal["serial"] = Field(description="serial: a microcontroller speaking the panel protocol")
    buttons: list[ButtonSpec] = Field(min_length=1, max_length=16, description="rating buttons, button 1 first")
    baudrate: int = Field(default=115200, description="serial speed (USB CDC ignores it; UART adapters do not)")
    usb: UsbId | None = Field(
        default=None,
        description="find the port by USB id when no port is configured or the configured one has vanished",
    )
    heartbeat_ms: int = Field(
        default=1000, ge=100, le=10000, description="the MCU's heartbeat interval; 3 missed = disconnected"
    )
    firmware: FirmwareRange = Field(default_factory=lambda: FirmwareRange(), description="accepted firmware versions")
    mcu_config: dict[str, int | bool | str] = Field(
        default_factory=dict, description="settings sent to the MCU as CFG key=value after every HELLO"
    )

    @field_validator("baudrate")
    @classmethod
    def _standard_baud(cls, value: int) -> int:
        allowed = (9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600)
        if value not in allowed:
            raise ValueError(f"baudrate must be one of {', '.join(map(str, allowed))}")
        return value

    @field_validator("mcu_config")
    @classmethod
    def _cfg_syntax(cls, value: dict[str, int | bool | str]) -> dict[str, int | bool | str]:
        from drivers.panel.protocol import cfg_frames  # the protocol module owns the CFG grammar

        cfg_frames(value)  # raises ProtocolError (a ValueError) on a bad key or value
        return value


Profile = GpioProfile | SerialProfile

_KINDS: dict[str, type[GpioProfile] | type[SerialProfile]] = {"gpio": GpioProfile, "serial": SerialProfile}


# -- board pin tables ------------------------------------------------------------------------------


class BoardPin(EdgeModel):
    """One GPIO of a board's header."""

    header: int = Field(description="physical pin number on the header")
    name: str = Field(default="", description="alternate-function name (SDA1, TXD0...)")
    reserved: str | None = Field(default=None, description="why this pin must never be used by a profile")
    special: str | None = Field(default=None, description="why using this pin needs allow_special: true")


class Board(EdgeModel):
    """A header's pin table (``firmware_config/boards/<name>.yaml``)."""

    name: str = Field(description="board table id")
    description: str = Field(default="", description="which boards have this header")
    gpio: dict[int, BoardPin] = Field(description="the GPIOs on the header by BCM number")


@functools.cache
def load_board(name: str) -> Board:
    """Load a board pin table by name. Raises :exc:`BadProfile` (key ``board``) if there is none."""
    path = firmware_config_dir() / "boards" / f"{name}.yaml"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        return Board.model_validate(data)
    except OSError:
        known = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise BadProfile([("board", f"no board table {name!r} (known: {', '.join(known) or 'none'})")]) from None
    except (yaml.YAMLError, ValidationError) as exc:
        raise BadProfile([("board", f"board table {path} is broken: {exc}")]) from exc


# -- checks that need the whole profile ------------------------------------------------------------


def profile_problems(
    profile: Profile, *, resources: Resources | None = None, holder_prefix: str = ""
) -> list[tuple[str, str]]:
    """Check what pydantic cannot see field by field; return ``(key_path, message)`` pairs.

    Pins are reserved in ``resources`` (a private registry if none) under ``holder_prefix + key_path``,
    so that a pin used twice names both key paths, and a clash with another section of the config
    names that section's key path.
    """
    found: list[tuple[str, str]] = []
    seen_labels: dict[str, int] = {}
    seen_scores: dict[int, int] = {}
    for i, b in enumerate(profile.buttons):
        if b.label in seen_labels:
            found.append((f"buttons[{i}].label", f"{b.label} is also the label of buttons[{seen_labels[b.label]}]"))
        seen_labels.setdefault(b.label, i)
        if b.score in seen_scores:
            found.append(
                (f"buttons[{i}].score", f"score {b.score} is also the score of buttons[{seen_scores[b.score]}]")
            )
        seen_scores.setdefault(b.score, i)

    if isinstance(profile, SerialProfile):
        hb = profile.mcu_config.get("hb_ms")
        if hb is not None and str(hb) != str(profile.heartbeat_ms):
            found.append(
                (
                    "mcu_config.hb_ms",
                    f"{hb} differs from heartbeat_ms {profile.heartbeat_ms}: the watchdog would misfire",
                )
            )
        return found

    pins = ((path, pin, isinstance(pin, OutputPin) and pin.shared) for path, pin in profile.pins())
    return found + gpio_pin_problems(profile.board, pins, resources=resources, holder_prefix=holder_prefix)


def gpio_pin_problems(
    board_name: str,
    pins: Iterable[tuple[str, PinSpec, bool]],
    *,
    resources: Resources | None = None,
    holder_prefix: str = "",
) -> list[tuple[str, str]]:
    """Check ``(key_path, pin, shared)`` triples against a board's pin table and reserve them.

    Shared by every profile that puts things on GPIO pins (panels, relay boards): a pin that is not on
    the header, is reserved or is special without ``allow_special``, or is already held in
    ``resources`` (a private registry if none) is a ``(key_path, message)`` problem.
    """
    try:
        board = load_board(board_name)
    except BadProfile as exc:
        return list(exc.problems)
    found: list[tuple[str, str]] = []
    registry = resources if resources is not None else Resources()
    for path, pin, shared in pins:
        bp = board.gpio.get(pin.number)
        if bp is None:
            usable = _ranges(n for n in sorted(board.gpio) if not board.gpio[n].reserved)
            found.append((path, f"GPIO {pin.number} is not on the {board.name} header (usable: GPIO {usable})"))
            continue
        if bp.reserved:
            found.append((path, f"GPIO {pin.number} is reserved: {bp.reserved}"))
            continue
        if bp.special and not pin.allow_special:
            found.append((path, f"GPIO {pin.number} is {bp.special}; set allow_special: true to use it anyway"))
            continue
        try:
            registry.reserve("gpio", pin.number, holder_prefix + path, shared=shared)
        except ResourceBusy as exc:
            found.append((path, str(exc)))
    return found


def _ranges(numbers: Iterable[int]) -> str:
    """``[2, 3, 4, 7]`` → ``"2-4, 7"``."""
    spans: list[list[int]] = []
    for n in numbers:
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in spans)


P = TypeVar("P", bound=ProfileModel)


def validate_profile(
    data: Any,
    source: str,
    kinds: Mapping[str, type[P]] | type[P],
    whole_problems: Callable[[P], list[tuple[str, str]]],
) -> P:
    """Validate profile data (as loaded from YAML) of any kind. Raises :exc:`BadProfile` listing every problem.

    ``kinds``: the model by the data's ``kind`` key, or the one model of a profile without kinds.
    ``whole_problems``: the second layer, what needs the whole profile (``(key_path, message)`` pairs).
    """
    if not isinstance(data, dict):
        raise BadProfile([("(top level)", "a profile is a mapping of keys to values")], source)
    if isinstance(kinds, Mapping):
        kind = data.get("kind")
        cls = kinds.get(kind) if isinstance(kind, str) else None
        if cls is None:
            msg = "required key is missing" if kind is None else f"must be one of {', '.join(kinds)}, got {kind!r}"
            raise BadProfile([("kind", msg)], source)
    else:
        cls = kinds
    try:
        profile = cls.model_validate(data)
    except ValidationError as exc:
        raise BadProfile(problems(exc), source) from None
    profile._source = source
    found = whole_problems(profile)
    if found:
        raise BadProfile(found, source)
    return profile


def parse_profile(data: Any, source: str = "") -> Profile:
    """Validate profile data (as loaded from YAML). Raises :exc:`BadProfile` listing every problem."""
    return validate_profile(data, source, _KINDS, profile_problems)


def resolve_profile_path(name_or_path: str | Path, directory: Path | None = None) -> Path:
    """A profile name (``gpio-4btn-rpi``) → ``firmware_config/gpio-4btn-rpi.yaml``; a path stays a path.

    ``directory`` is where names are looked up (default: ``firmware_config/``, the panels).
    """
    text = str(name_or_path)
    if isinstance(name_or_path, Path) or "/" in text or text.endswith((".yaml", ".yml")):
        return Path(text).expanduser()
    return (directory if directory is not None else firmware_config_dir()) / f"{text}.yaml"


def read_profile_data(name_or_path: str | Path, directory: Path | None = None) -> tuple[Any, str]:
    """The YAML data of a profile by name (looked up in ``directory``) or path, and where it came from.

    Raises :exc:`BadProfile`: key ``profile`` (without a source) when there is no such file or it cannot
    be read, key ``(top level)`` (with the file as source) when it is not YAML.
    """
    path = resolve_profile_path(name_or_path, directory)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        where = directory if directory is not None else firmware_config_dir()
        shipped = ", ".join(sorted(p.stem for p in where.glob("*.yaml"))) or "none"
        raise BadProfile([("profile", f"no profile {str(name_or_path)!r} (shipped: {shipped})")]) from None
    except OSError as exc:
        raise BadProfile([("profile", f"cannot read {path}: {exc.strerror}")]) from None
    try:
        return yaml.safe_load(text), str(path)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where_line = f" at line {mark.line + 1}" if mark is not None else ""
        raise BadProfile(
            [("(top level)", f"not valid YAML{where_line}: {getattr(exc, 'problem', exc)}")], str(path)
        ) from None


def load_profile(name_or_path: str | Path) -> Profile:
    """Load and validate a profile by name or path. Raises :exc:`BadProfile` with key-path problems."""
    data, source = read_profile_data(name_or_path)
    return parse_profile(data, source=source)


def in_profile(found: Iterable[tuple[str, str]], source: str) -> list[tuple[str, str]]:
    """Problems inside a profile file, each message naming the file (``... (in profile twice.yaml)``)."""
    name = Path(source).name
    return [(key, f"{msg} (in profile {name})") for key, msg in found]


def section_profile(load: Callable[[str], P], profile: str) -> tuple[P | None, list[tuple[str, str]]]:
    """The profile a config section names, loaded by ``load``; or None and the section's problems.

    A profile that cannot be found or read is a problem of the section's ``profile`` key; one inside
    the file keeps its key path and names the file.
    """
    try:
        return load(profile), []
    except BadProfile as exc:
        if not exc.source:  # the profile itself could not be found or read
            return None, [("profile", msg) for _, msg in exc.problems]
        return None, in_profile(exc.problems, exc.source)


def check_panel(
    profile: str,
    port: str | None = None,
    *,
    resources: Resources | None = None,
    prefix: str = "panel",
) -> list[tuple[str, str]]:
    """Validate a ``[panel]`` config section without opening hardware; return ``(key_path, message)`` pairs.

    Key paths are relative to the section (``profile``, ``port``, ``buttons[2].pin``): the config layer
    prefixes ``panel.``. Problems inside the profile file name the file in the message. Pins and the
    port are reserved in ``resources`` under ``prefix``-qualified holders, so a clash with another
    section reads ``GPIO 17 is used by relays.zones[0]``.
    """
    prof, found = section_profile(load_profile, profile)
    if prof is None:
        return found
    holder = f"{prefix}." if prefix else ""
    if resources is not None:
        found += in_profile(profile_problems(prof, resources=resources, holder_prefix=holder), prof.source)
    usb = None if isinstance(prof, GpioProfile) else prof.usb
    return found + section_port_problems(
        "panel", port, serial=isinstance(prof, SerialProfile), usb=usb, resources=resources, holder=f"{holder}port"
    )


def section_port_problems(
    what: str,
    port: str | None,
    *,
    serial: bool,
    usb: UsbId | None,
    resources: Resources | None = None,
    holder: str = "port",
) -> list[tuple[str, str]]:
    """The ``port`` problems of a config section for a ``what`` (panel, relay board) on GPIO or serial.

    A GPIO device has no port; a serial one needs a well-formed port (reserved in ``resources`` for
    ``holder``) unless its profile's ``usb`` id finds it.
    """
    if not serial:
        return [("port", f"a GPIO {what} has no serial port; remove port")] if port else []
    if port:
        problem = serial_port_problem(port, resources=resources, holder=holder)
        return [("port", problem)] if problem else []
    if usb is None:
        need = f"a serial {what} needs a port (e.g. /dev/serial/by-id/..., or usb:VID:PID) or usb: in its profile"
        return [("port", need)]
    return []


def serial_port_problem(port: str, *, resources: Resources | None = None, holder: str = "port") -> str | None:
    """What is wrong with a configured serial ``port`` (a device path or ``usb:VID:PID``), or None.

    A well-formed port is reserved in ``resources`` (if given) for ``holder``; a port another section
    holds is a problem naming that section's key path.
    """
    if port.startswith("usb:"):
        try:
            UsbId.model_validate(port)
        except ValidationError as exc:
            return problems(exc)[0][1]
    elif not port.startswith("/"):
        return f"{port!r} is not a device path (/dev/...) or usb:VID:PID"
    if resources is not None:
        try:
            resources.reserve("serial", port, holder)
        except ResourceBusy as exc:
            return str(exc)
    return None
