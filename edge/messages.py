"""Payloads of MQTT contract version 1 (DESIGN.md §4), shared by the device and the collector."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints, ValidationError, model_validator

from edge.exceptions import BadMessage
from edge.model import EdgeModel, Slug, Uuid

EventType = Annotated[str, StringConstraints(pattern=r"^[a-z0-9_.-]{1,64}$")]
Epoch = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{8,64}$")]

MAX_EVENTS_PER_BATCH = 10_000
MAX_ACK_RANGES = 10_000


class WireEvent(EdgeModel):
    id: Uuid = Field(description="UUIDv7 of the event; the collector stores each id once.")
    seq: int = Field(ge=1, description="Per-device, per-epoch sequence number; never reused.")
    type: EventType = Field(description="Event type, the same for every event of a batch.")
    priority: Literal["critical", "normal", "bulk"] = Field(description="Eviction class on the device.")
    ts: str = Field(max_length=40, description="Wall-clock time of the event, ISO 8601 with offset.")
    clock_synced: bool = Field(description="Whether the device clock was synchronised at the time.")
    data: dict[str, Any] = Field(description="Type-specific fields.")


class EventBatch(EdgeModel):
    v: Literal[1] = Field(description="Contract version.")
    device: Slug = Field(description="Sending device id.")
    commune: Slug = Field(description="Sending device's commune.")
    epoch: Epoch = Field(description="Random id of the device's event database; seq restarts with it.")
    events: list[WireEvent] = Field(
        min_length=1, max_length=MAX_EVENTS_PER_BATCH, description="Events of one type in seq order."
    )

    @model_validator(mode="after")
    def _one_type_in_order(self) -> EventBatch:
        first = self.events[0].type
        last_seq = 0
        for ev in self.events:
            if ev.type != first:
                raise ValueError("a batch carries events of one type")
            if ev.seq <= last_seq:
                raise ValueError("events must be in increasing seq order")
            last_seq = ev.seq
        return self


#: A collector's reason for rejecting events: a short countable word (``schema``, ``malformed``...).
RejectReason = Annotated[str, StringConstraints(pattern=r"^[a-z_]{1,32}$")]


class EvtAck(EdgeModel):
    """``evtack``: what the collector did with a device's events.

    ``ranges`` are stored. ``rejected`` (added to contract version 1 in a backward-compatible way:
    absent means none) will never be stored, for ``reason``: the device sets them aside as
    undeliverable and stops sending them. A collector sends ``ranges`` always, empty when it only
    rejects, so a device that predates ``rejected`` ignores such an answer and nothing else changes.
    """

    v: Literal[1] = Field(description="Contract version.")
    epoch: Epoch = Field(description="The epoch the ranges refer to.")
    ranges: list[tuple[int, int]] = Field(
        max_length=MAX_ACK_RANGES, description="Inclusive [from_seq, to_seq] ranges now stored."
    )
    rejected: list[tuple[int, int]] = Field(
        default_factory=list,
        max_length=MAX_ACK_RANGES,
        description="Inclusive [from_seq, to_seq] ranges the collector will never store (see reason).",
    )
    reason: RejectReason | None = Field(default=None, description="Why the rejected ranges were rejected.")
    detail: str | None = Field(
        default=None, max_length=500, description="The first problem found, for people (key path first)."
    )

    @model_validator(mode="after")
    def _ordered_ranges(self) -> EvtAck:
        for a, b in [*self.ranges, *self.rejected]:
            if a < 1 or b < a:
                raise ValueError(f"bad range [{a}, {b}]")
        if not self.ranges and not self.rejected:
            raise ValueError("an evtack acknowledges or rejects at least one range")
        if self.rejected and self.reason is None:
            raise ValueError("rejected ranges need a reason")
        return self


class DeviceStatus(EdgeModel):
    v: Literal[1] = 1
    online: bool
    boot: int
    version: str
    roles: list[str]
    ts: str


class ServerStatus(EdgeModel):
    v: Literal[1] = 1
    online: bool
    ts: str


AckState = Literal["accepted", "rejected", "in_progress", "succeeded", "failed"]

#: Ack states after which nothing more is said about a command.
TERMINAL_STATES = frozenset({"rejected", "succeeded", "failed"})


class CommandAck(EdgeModel):
    """``ack``: what the device did with a command."""

    v: Literal[1] = 1
    cmd_id: str | None = Field(
        description="The command's id; null when the message was too broken to carry one it could trust."
    )
    state: AckState = Field(description="accepted, rejected, in_progress, succeeded or failed.")
    reason: str | None = Field(default=None, description="Why it was rejected or failed.")
    ts: str = Field(description="Device time of this ack, ISO 8601 with offset.")
    result: dict[str, Any] = Field(default_factory=dict, description="What the command produced.")


class CfgReported(EdgeModel):
    """``cfg/reported`` (retained): the outcome of the last desired configuration."""

    v: Literal[1] = 1
    version: int = Field(description="The desired config version this is about.")
    status: Literal["applied", "rejected"] = Field(description="applied or rejected.")
    reason: str | None = Field(default=None, description="Why it was rejected (key path first).")
    ts: str = Field(description="Device time, ISO 8601 with offset.")


def parse(model: type[EdgeModel], payload: bytes, max_bytes: int) -> Any:
    """Validate a JSON payload against a contract model, raising BadMessage with a countable reason."""
    if len(payload) > max_bytes:
        raise BadMessage("oversized", f"{len(payload)} bytes, limit {max_bytes}")
    try:
        return model.model_validate_json(payload)
    except ValidationError as exc:
        kinds = {e["type"] for e in exc.errors(include_url=False)}
        if kinds & {"json_invalid", "json_type"}:
            raise BadMessage("malformed", "not valid JSON") from None
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise BadMessage("schema", f"{where}: {first['msg']}") from None
