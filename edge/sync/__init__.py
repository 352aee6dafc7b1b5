"""MQTT sync: the paho boundary (link) and the outbox uplink."""

from edge.sync.link import LinkSettings, MqttLink, Will
from edge.sync.uplink import Uplink

__all__ = ["LinkSettings", "MqttLink", "Uplink", "Will"]
