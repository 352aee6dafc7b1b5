"""MQTT topic names of contract version 1 (DESIGN.md §4), in one place."""

from __future__ import annotations

from dataclasses import dataclass

#: A clip id in ``media/{clip_id}`` is the UUID its evidence event gave the clip (edge.ids.new_id); being
#: nothing else, it is safe as a file name on either side.
CLIP_ID_RE = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"


@dataclass(frozen=True)
class Topics:
    """Topics of one device: ``{root}/{commune}/dev/{device}/...``."""

    root: str
    commune: str
    device: str

    @property
    def prefix(self) -> str:
        return f"{self.root}/{self.commune}/dev/{self.device}/"

    def evt(self, event_type: str) -> str:
        return f"{self.prefix}evt/{event_type}"

    @property
    def evtack(self) -> str:
        return f"{self.prefix}evtack"

    @property
    def status(self) -> str:
        return f"{self.prefix}status"

    def cmd(self, name: str) -> str:
        return f"{self.prefix}cmd/{name}"

    @property
    def cmd_filter(self) -> str:
        return f"{self.prefix}cmd/#"

    @property
    def ack(self) -> str:
        return f"{self.prefix}ack"

    @property
    def cfg_desired(self) -> str:
        return f"{self.prefix}cfg/desired"

    @property
    def cfg_reported(self) -> str:
        return f"{self.prefix}cfg/reported"

    def media(self, clip_id: str) -> str:
        """Where the chunks of an evidence clip go (DESIGN.md §9 "Upload")."""
        return f"{self.prefix}media/{clip_id}"

    @property
    def mediaack(self) -> str:
        return f"{self.prefix}mediaack"

    @property
    def server_status(self) -> str:
        return server_status_topic(self.root, self.commune)


def server_status_topic(root: str, commune: str) -> str:
    return f"{root}/{commune}/server/status"


def events_filter(root: str, commune: str = "+") -> str:
    """What the collector subscribes to: every device's events in a commune (or all: ``+``)."""
    return f"{root}/{commune}/dev/+/evt/#"


def media_filter(root: str, commune: str = "+") -> str:
    """What the collector subscribes to for evidence uploads: every device's ``media/{clip_id}``."""
    return f"{root}/{commune}/dev/+/media/#"


@dataclass(frozen=True)
class DeviceTopic:
    root: str
    commune: str
    device: str
    rest: str


def parse_device_topic(topic: str) -> DeviceTopic | None:
    """Split ``root/commune/dev/device/rest...``; None if the topic is not a device topic."""
    parts = topic.split("/", 4)
    if len(parts) != 5 or parts[2] != "dev" or not all(parts):
        return None
    return DeviceTopic(parts[0], parts[1], parts[3], parts[4])
