"""Writing configuration as commented TOML (``edge init``, ``edge config show``)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin

from edge.config.broadcast import BroadcastConfig
from edge.config.commands import CommandsConfig
from edge.config.common import DEFAULT_STATE_DIR, Role
from edge.config.counter import PanelConfig, RatingConfig
from edge.config.device import HealthConfig, StoreConfig
from edge.config.mqtt import MqttConfig, SyncConfig, TlsConfig
from edge.config.relays import RelaysConfig
from edge.config.root import EdgeConfig
from edge.config.speaker import SpeakerConfig
from edge.config.speech import SpeechConfig
from edge.config.update import UpdateConfig
from edge.model import EdgeModel


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


#: Before the starter's ``[update]``, which is written commented out: updates are off until a
#: technician names the update server (``[update]`` can only be set in the local file).
UPDATE_LEAD = (
    "# Signed software updates (device.update) are off: to take them, uncomment [update] and allow_hosts\n"
    "# and list the commune's update server there; uncomment another key to change it. As written, every\n"
    "# update is refused.\n"
)


def commented_out(toml: str) -> str:
    """``toml`` with its tables and keys commented out; its comments stay as they are."""
    return "".join(line if line.startswith("#") or not line.strip() else f"# {line}" for line in toml.splitlines(True))


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
    if role == "loudspeaker":
        # A GPIO relay module and the default sound card: what `edge sim --role loudspeaker` runs on
        # out of the box (MockFactory pins, ALSA's default device), and the commonest real wiring.
        data["relays"] = RelaysConfig(profile="gpio-4ch-rpi").model_dump(mode="json")
        data["speaker"] = SpeakerConfig().model_dump(mode="json")
        data["speech"] = SpeechConfig().model_dump(mode="json")
        data["broadcast"] = BroadcastConfig().model_dump(mode="json")
    EdgeConfig.model_validate(data)  # a bad --device or --commune fails here, not at first start
    header = (
        f"# commune-edge configuration for a {role} device.\n"
        "# Check it with `edge config validate`; any value can be overridden by an environment\n"
        "# variable EDGE_<SECTION>__<KEY>, e.g. EDGE_MQTT__BROKER=mqtts://server:8883.\n\n"
    )
    update = render_toml({"update": UpdateConfig().model_dump(mode="json")})
    return header + render_toml(data) + "\n" + UPDATE_LEAD + commented_out(update)
