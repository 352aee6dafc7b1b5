"""The whole configuration: one model whose fields are the TOML's sections."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, ValidationInfo, field_validator

from edge.config.commands import CommandsConfig
from edge.config.counter import PanelConfig, RatingConfig
from edge.config.device import DeviceConfig, HealthConfig, StoreConfig
from edge.config.mqtt import MqttConfig, SyncConfig
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
