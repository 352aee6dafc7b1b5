"""Device configuration: one TOML file, validated by strict pydantic models.

Every value may be overridden by an environment variable ``EDGE_<SECTION>__<KEY>`` (for example
``EDGE_MQTT__BROKER=mqtts://server.local:8883``). Secrets are never written in the TOML: fields that
hold them are *file* paths (``password_file``), which may be relative to systemd's
``$CREDENTIALS_DIRECTORY`` so ``LoadCredential=`` works.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import time as TimeOfDay
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from edge.commands.claims import DEFAULT_CLOCK_SKEW_S, DEFAULT_MAX_LIFE_S
from edge.exceptions import ConfigError
from edge.keys import KeyMaterialError, load_trusted_key
from edge.model import EdgeModel, Slug, problems

DEFAULT_CONFIG_PATH = Path("/etc/commune-edge/edge.toml")
DEFAULT_STATE_DIR = Path("/var/lib/commune-edge")
ENV_PREFIX = "EDGE_"

Role = Literal["counter", "loudspeaker"]


@dataclass(frozen=True)
class BrokerAddress:
    """A parsed ``mqtt://host:port`` or ``mqtts://host:port`` URL."""

    host: str
    port: int
    tls: bool

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts"):
            raise ValueError(f"broker URL must start with mqtt:// or mqtts://, got {url!r}")
        if not parts.hostname:
            raise ValueError(f"broker URL has no host: {url!r}")
        if parts.path not in ("", "/") or parts.query or parts.username or parts.password:
            raise ValueError(f"broker URL takes only scheme, host and port (no path or user): {url!r}")
        try:
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"broker URL has a bad port: {url!r}") from exc
        tls = parts.scheme == "mqtts"
        return cls(parts.hostname, port or (8883 if tls else 1883), tls)

    def __str__(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def resolve_secret_path(path: Path) -> Path:
    """A secret file path; relative paths are looked up in systemd's credentials directory first."""
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if not path.is_absolute() and creds and (Path(creds) / path).exists():
        return Path(creds) / path
    return path


class DeviceConfig(EdgeModel):
    id: Slug = Field(description="This device's id, unique in the commune, e.g. 'counter-01'.")
    commune: Slug = Field(description="The commune's slug, e.g. 'gia-ray'.")
    roles: list[Role] = Field(
        min_length=1, description="What this device does: 'counter' (rating panel) and/or 'loudspeaker'."
    )


class TlsConfig(EdgeModel):
    ca_file: Path | None = Field(
        default=None, description="CA certificate (PEM) that signed the broker; required with mqtts://."
    )
    cert_file: Path | None = Field(
        default=None, description="This device's client certificate (PEM); its CN is the device id."
    )
    key_file: Path | None = Field(
        default=None,
        description="Private key for cert_file (PEM). May be relative to $CREDENTIALS_DIRECTORY.",
    )

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be given together")
        return self


class MqttConfig(EdgeModel):
    broker: str = Field(description="Broker URL: mqtt://HOST:PORT, or mqtts://HOST:PORT for TLS.")
    root: Slug = Field(default="vn", description="First level of every topic.")
    client_id: str | None = Field(default=None, description="MQTT client id; defaults to the device id.")
    keepalive_s: int = Field(default=30, ge=5, le=3600, description="MQTT keepalive in seconds.")
    session_expiry_s: int = Field(
        default=3600,
        ge=0,
        description="How long the broker keeps this device's session (and queued commands) while it is away.",
    )
    username: str | None = Field(default=None, description="MQTT user name, when the broker uses passwords.")
    password_file: Path | None = Field(
        default=None, description="File holding the MQTT password (never the password itself)."
    )
    max_incoming_bytes: int = Field(
        default=64 * 1024,
        ge=1024,
        description="Incoming messages larger than this are rejected and counted, never parsed.",
    )
    tls: TlsConfig = Field(default_factory=TlsConfig, description="TLS files for mqtts:// brokers.")

    @field_validator("broker")
    @classmethod
    def _broker_url(cls, value: str) -> str:
        BrokerAddress.parse(value)
        return value

    @model_validator(mode="after")
    def _tls_needs_ca(self) -> MqttConfig:
        if self.address.tls and self.tls.ca_file is None:
            raise ValueError("mqtts:// needs tls.ca_file")
        return self

    @property
    def address(self) -> BrokerAddress:
        return BrokerAddress.parse(self.broker)


class StoreConfig(EdgeModel):
    state_dir: Path = Field(
        default=DEFAULT_STATE_DIR, description="Directory for events.db and media; created if missing."
    )
    max_bytes: int = Field(
        default=512 * 1024 * 1024,
        ge=256 * 1024,
        description="Byte cap on events.db plus its WAL. Past it, bulk then normal events are evicted; "
        "critical events never are.",
    )
    keep_acked_s: int = Field(
        default=86400,
        ge=0,
        description="How long events the server has acknowledged stay listed in `edge events`.",
    )


class SyncConfig(EdgeModel):
    batch_max_events: int = Field(default=500, ge=1, le=10000, description="Most events in one message.")
    batch_max_bytes: int = Field(
        default=128 * 1024, ge=1024, description="Most payload bytes in one message (one event may exceed it)."
    )
    max_inflight: int = Field(
        default=16, ge=1, le=1000, description="Messages sent and not yet acknowledged by the collector."
    )
    ack_timeout_s: float = Field(
        default=20.0, gt=0, description="Events not acknowledged by the collector within this are sent again."
    )
    reconnect_min_s: float = Field(default=0.5, gt=0, description="First reconnect delay.")
    reconnect_max_s: float = Field(default=60.0, gt=0, description="Cap of the exponential reconnect delay.")

    @model_validator(mode="after")
    def _backoff_order(self) -> SyncConfig:
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must be at least reconnect_min_s")
        return self


class HealthConfig(EdgeModel):
    interval_s: float = Field(default=300.0, ge=1.0, description="Seconds between health events.")


class CommandsConfig(EdgeModel):
    trusted_keys: dict[str, str] = Field(
        default_factory=dict,
        description="Command-verification keys: a table from key id (kid) to a PEM public key file or a "
        "base64url raw Ed25519 public key (`edge keys signing show` prints both). Empty: every command "
        "is rejected.",
    )
    max_life_s: int = Field(
        default=DEFAULT_MAX_LIFE_S, ge=1, le=86400, description="Longest life (exp - iat) a command may have."
    )
    clock_skew_s: int = Field(
        default=DEFAULT_CLOCK_SKEW_S,
        ge=0,
        le=3600,
        description="How far ahead of this clock a command's iat may be (the server's clock runs ahead).",
    )

    @field_validator("trusted_keys")
    @classmethod
    def _keys_load(cls, value: dict[str, str]) -> dict[str, str]:
        errors = []
        for kid, spec in value.items():
            if not kid or len(kid) > 128:
                errors.append(f"key id {kid!r} must be 1 to 128 characters")
                continue
            try:
                load_trusted_key(spec)
            except KeyMaterialError as exc:
                errors.append(f"{kid}: {exc}")
        if errors:
            raise ValueError("; ".join(errors))
        return value


# -- the counter: rating panel and rating service ------------------------------------------------

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

        found = [(key, msg) for key, msg in check_panel(value) if key != "port"]
        if found:
            raise ValueError("; ".join(msg if key == "profile" else f"{key}: {msg}" for key, msg in found))
        return value

    @field_validator("port")
    @classmethod
    def _port_checks(cls, value: str | None, info: ValidationInfo) -> str | None:
        from drivers.profiles import check_panel

        profile = info.data.get("profile")
        if profile is None:
            return value  # the profile is broken; that is reported under panel.profile
        found = [msg for key, msg in check_panel(profile, value) if key == "port"]
        if found:
            raise ValueError("; ".join(found))
        return value


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


class EdgeConfig(EdgeModel):
    """The whole device configuration (``/etc/commune-edge/edge.toml``)."""

    device: DeviceConfig = Field(description="Who this device is.")
    mqtt: MqttConfig = Field(description="How to reach the commune broker.")
    store: StoreConfig = Field(default_factory=StoreConfig, description="The local event store.")
    sync: SyncConfig = Field(default_factory=SyncConfig, description="How events are sent to the server.")
    health: HealthConfig = Field(default_factory=HealthConfig, description="Periodic health reports.")
    commands: CommandsConfig = Field(
        default_factory=CommandsConfig, description="Who may command this device (signed commands)."
    )
    panel: PanelConfig | None = Field(
        default=None, description="The rating panel (counter devices); without it no ratings are taken."
    )
    rating: RatingConfig = Field(
        default_factory=RatingConfig, description="Rating windows, misuse rules, officers and feedback."
    )

    @field_validator("panel")
    @classmethod
    def _panel_needs_counter(cls, value: PanelConfig | None, info: ValidationInfo) -> PanelConfig | None:
        device = info.data.get("device")
        if value is not None and device is not None and "counter" not in device.roles:
            raise ValueError("a rating panel needs the 'counter' role in device.roles")
        return value

    @property
    def client_id(self) -> str:
        return self.mqtt.client_id or self.device.id

    @property
    def db_path(self) -> Path:
        return self.store.state_dir / "events.db"


# -- loading ---------------------------------------------------------------------------------


def _env_value(raw: str) -> Any:
    """Environment values are strings; JSON lists, tables, numbers and booleans are decoded."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """``EDGE_<SECTION>__<KEY>[__<SUBKEY>...]`` variables as a nested dict (keys lower-cased)."""
    tree: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        if not all(path):
            continue
        node = tree
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                break
            node = child
        else:
            node[path[-1]] = _env_value(raw)
    return tree


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def config_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The config file to use: ``--config``, else ``$EDGE_CONFIG``, else the system default."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("EDGE_CONFIG")
    return Path(env) if env else DEFAULT_CONFIG_PATH


def parse_config(data: Mapping[str, Any], source: str = "") -> EdgeConfig:
    """Validate already-loaded data; raise ConfigError listing every problem with its key path."""
    try:
        return EdgeConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(problems(exc), source) from None


def merge_config(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``, table by table (for overrides and the live ``cfg/desired``)."""
    return _merge(base, over)


def load_config(path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None) -> EdgeConfig:
    """Read the TOML file, apply ``EDGE_*`` overrides and validate."""
    data, source = load_config_data(path, environ)
    return parse_config(data, source)


def load_config_data(
    path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> tuple[dict[str, Any], str]:
    """The TOML file's data with ``EDGE_*`` overrides applied, not yet validated, and its source name."""
    file = config_path(path)
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([("(file)", f"{file} does not exist; `edge init` writes a starter")], str(file)) from None
    except OSError as exc:
        raise ConfigError([("(file)", f"cannot read {file}: {exc.strerror}")], str(file)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([("(file)", f"not valid TOML: {exc}")], str(file)) from None
    data = _merge(data, env_overrides(os.environ if environ is None else environ))
    return data, str(file)


# -- rendering (edge init, edge config show) ----------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _section_model(annotation: Any) -> type[EdgeModel] | None:
    """The model of a TOML table field (``X`` or ``X | None``), None for a plain value."""
    if get_origin(annotation) in (Union, UnionType):
        models = [a for a in get_args(annotation) if a is not type(None)]
        annotation = models[0] if len(models) == 1 else None
    if isinstance(annotation, type) and issubclass(annotation, EdgeModel):
        return annotation
    return None


def render_toml(values: Mapping[str, Any], model: type[EdgeModel] = EdgeConfig, comments: bool = True) -> str:
    """Write config data as TOML, each key preceded by its field description as a comment.

    Keys whose value is None are written commented out, so a technician sees every option.
    """
    lines: list[str] = []

    def section(name: str, data: Mapping[str, Any], cls: type[EdgeModel]) -> None:
        sub_tables: list[tuple[str, Mapping[str, Any], type[EdgeModel]]] = []
        if lines:
            lines.append("")
        lines.append(f"[{name}]")
        for key, field in cls.model_fields.items():
            value = data.get(key)
            sub_model = _section_model(field.annotation)
            if sub_model is not None:
                sub_tables.append((f"{name}.{key}", value or {}, sub_model))
                continue
            if comments and field.description:
                lines.append(f"# {field.description}")
            if value is None:
                lines.append(f"# {key} = ")
            else:
                lines.append(f"{key} = {_toml_value(value)}")
        for sub_name, sub_data, sub_cls in sub_tables:
            section(sub_name, sub_data, sub_cls)

    for key, field in model.model_fields.items():
        sub_model = _section_model(field.annotation)
        if sub_model is not None and values.get(key) is not None:
            section(key, values[key], sub_model)
    return "\n".join(lines) + "\n"


def starter_config(
    role: Role,
    device: str | None = None,
    commune: str | None = None,
    broker: str | None = None,
    state_dir: str | None = None,
) -> str:
    """A commented starter config for ``edge init``; it validates as written."""
    url = broker or "mqtt://127.0.0.1:1883"
    tls = (
        TlsConfig(
            ca_file=Path("/etc/commune-edge/ca.pem"),
            cert_file=Path("/etc/commune-edge/device.pem"),
            key_file=Path("device.key"),
        )
        if url.startswith("mqtts://")
        else TlsConfig()
    )
    data: dict[str, Any] = {
        "device": {"id": device or f"{role}-01", "commune": commune or "my-commune", "roles": [role]},
        "mqtt": MqttConfig(broker=url, tls=tls).model_dump(mode="json"),
        "store": StoreConfig(state_dir=Path(state_dir) if state_dir else DEFAULT_STATE_DIR).model_dump(mode="json"),
        "sync": SyncConfig().model_dump(mode="json"),
        "health": HealthConfig().model_dump(mode="json"),
        "commands": CommandsConfig().model_dump(mode="json"),
    }
    if role == "counter":
        data["panel"] = PanelConfig(profile="gpio-4btn-rpi").model_dump(mode="json")
        data["rating"] = RatingConfig().model_dump(mode="json")
    EdgeConfig.model_validate(data)  # a bad --device or --commune fails here, not at first start
    header = (
        f"# commune-edge configuration for a {role} device.\n"
        "# Check it with `edge config validate`; any value can be overridden by an environment\n"
        "# variable EDGE_<SECTION>__<KEY>, e.g. EDGE_MQTT__BROKER=mqtts://server:8883.\n\n"
    )
    return header + render_toml(data)
