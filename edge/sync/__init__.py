"""MQTT sync: the paho boundary (link) and the outbox uplink."""

from edge.sync.link import Backoff, LinkSettings, MqttLink, Will
from edge.sync.uplink import Uplink

__all__ = ["Backoff", "LinkSettings", "MqttLink", "Uplink", "Will"]
