"""Health reports: what a technician or the server needs to see that a device is well."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from edge.store import Outbox
from edge.sync.undeliverable import undeliverable_count

_THERMAL = Path("/sys/class/thermal/thermal_zone0/temp")


def cpu_temp_c() -> float | None:
    try:
        return round(int(_THERMAL.read_text().strip()) / 1000.0, 1)
    except (OSError, ValueError):
        return None


def mem_available_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def health_data(outbox: Outbox, started_monotonic: float, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``data`` of a ``health`` event."""
    stats = outbox.stats()
    age = stats.oldest_pending_age_s
    return {
        "uptime_s": round(time.monotonic() - started_monotonic, 1),
        "cpu_temp_c": cpu_temp_c(),
        "load": [round(x, 2) for x in os.getloadavg()],
        "mem_available_bytes": mem_available_bytes(),
        "disk_free_bytes": shutil.disk_usage(outbox.path.parent).free,
        "queue_depth": stats.depth,
        "oldest_pending_age_s": None if age is None else round(age, 1),
        "store_bytes": stats.db_bytes,
        "evictions": stats.evictions,
        "undeliverable": undeliverable_count(outbox),
        "clock_synced": outbox.clock.synced(),
        **(extra or {}),
    }
