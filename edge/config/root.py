"""The whole configuration: one model whose fields are the TOML's sections."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from edge.config.broadcast import BroadcastConfig, zone_cap_problems
from edge.config.camera import CameraList
from edge.config.commands import CommandsConfig
from edge.config.counter import PanelConfig, RatingConfig
from edge.config.device import DeviceConfig, HealthConfig, StoreConfig
from edge.config.mqtt import MqttConfig, SyncConfig
from edge.config.relays import RelaysConfig
from edge.config.speaker import SpeakerConfig
from edge.config.speech import SpeechConfig
from edge.config.update import UpdateConfig
from edge.model import EdgeModel


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
    camera: CameraList = Field(
        default_factory=list,
        description="The counter's cameras ([[camera]] tables): officer presence, tamper alarms, evidence clips.",
    )
    relays: RelaysConfig | None = Field(
        default=None, description="The relay board (loudspeaker devices): amplifier power and speaker zones."
    )
    speaker: SpeakerConfig | None = Field(
        default=None,
        description="The loudspeaker's sound card and optional capture input; empty: the default output, no self-test.",
    )
    speech: SpeechConfig = Field(
        default_factory=SpeechConfig, description="How announcement text is spoken (loudspeaker devices)."
    )
    broadcast: BroadcastConfig = Field(
        default_factory=BroadcastConfig,
        description="The broadcast scheduler (loudspeaker devices): quiet hours, volume caps, audio sources.",
    )
    update: UpdateConfig = Field(
        default_factory=UpdateConfig,
        description="Signed software updates: allowed hosts, the installation, health timeout, versions kept.",
    )

    @field_validator("panel")
    @classmethod
    def _panel_needs_counter(cls, value: PanelConfig | None, info: ValidationInfo) -> PanelConfig | None:
        device = info.data.get("device")
        if value is not None and device is not None and "counter" not in device.roles:
            raise ValueError("a rating panel needs the 'counter' role in device.roles")
        return value

    @model_validator(mode="after")
    def _one_user_per_resource(self) -> EdgeConfig:
        """Every pin and port is reserved in one registry, so a pin the panel and the relays both use is
        an error naming both key paths (``relays.profile: zones[0].pin: GPIO 17 is used by
        panel.buttons[0].pin``)."""
        from drivers.profiles import check_panel  # drivers import the config's base model, not the reverse
        from drivers.relay.profile import check_relays
        from drivers.resources import Resources

        found: list[tuple[tuple[str, ...], str]] = []
        if self.relays is not None and "loudspeaker" not in self.device.roles:
            found.append((("relays",), "a relay board needs the 'loudspeaker' role in device.roles"))
        if self.relays is None and "loudspeaker" in self.device.roles:
            found.append((("relays",), "the loudspeaker role needs a [relays] section (the relay board's profile)"))
        resources = Resources()
        if self.panel is not None:
            for key, msg in check_panel(self.panel.profile, self.panel.port, resources=resources):
                found.append(_section_problem("panel", key, msg, ("port",)))
        if self.relays is not None:
            relays = self.relays
            for key, msg in check_relays(relays.profile, relays.port, relays.modbus_unit, resources=resources):
                found.append(_section_problem("relays", key, msg, ("port", "modbus_unit")))
            found.extend(zone_cap_problems(self.broadcast, relays.profile))
        if found:
            raise ValidationError.from_exception_data(
                type(self).__name__,
                [
                    InitErrorDetails(
                        type=PydanticCustomError("resource_clash", "{message}", {"message": msg}), loc=loc, input=None
                    )
                    for loc, msg in found
                ],
            )
        return self

    @property
    def client_id(self) -> str:
        return self.mqtt.client_id or self.device.id

    @property
    def db_path(self) -> Path:
        return self.store.state_dir / "events.db"


def _section_problem(section: str, key: str, msg: str, own_keys: tuple[str, ...]) -> tuple[tuple[str, ...], str]:
    """A section check's ``(key, message)`` as a location: the section's own keys stay keys, a key inside
    the profile is reported under ``<section>.profile`` (as the section's own validators do)."""
    if key in own_keys or key == "profile":
        return (section, key), msg
    return (section, "profile"), f"{key}: {msg}"
