"""The device's durable event store (an outbox)."""

from edge.store.host import TimeSource
from edge.store.outbox import (
    DEFAULT_MAX_EVENT_BYTES,
    DEFAULT_PRIORITY,
    PRIORITIES,
    Committed,
    NewEvent,
    Outbox,
    Priority,
    StoredEvent,
    StoreStats,
    max_event_bytes_for,
    ranges_of,
)

__all__ = [
    "DEFAULT_MAX_EVENT_BYTES",
    "DEFAULT_PRIORITY",
    "PRIORITIES",
    "Committed",
    "NewEvent",
    "Outbox",
    "Priority",
    "StoreStats",
    "StoredEvent",
    "TimeSource",
    "max_event_bytes_for",
    "ranges_of",
]
