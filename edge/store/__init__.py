"""The device's durable event store (an outbox)."""

from edge.store.outbox import (
    DEFAULT_PRIORITY,
    PRIORITIES,
    Committed,
    NewEvent,
    Outbox,
    Priority,
    StoredEvent,
    StoreStats,
    ranges_of,
)

__all__ = [
    "DEFAULT_PRIORITY",
    "PRIORITIES",
    "Committed",
    "NewEvent",
    "Outbox",
    "Priority",
    "StoreStats",
    "StoredEvent",
    "ranges_of",
]
