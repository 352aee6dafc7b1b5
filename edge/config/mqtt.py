"""``[mqtt]`` and ``[sync]``: how the device reaches the broker and sends its events."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator, model_validator

from edge.config.common import BrokerAddress
from edge.model import EdgeModel, Slug


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
