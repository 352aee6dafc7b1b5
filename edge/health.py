"""Health reports: what a technician or the server needs to see that a device is well.

The daemon appends a ``health`` event every ``health.interval_s`` (and once at start) with
:func:`health_data`. Every reading is best effort: a sensor or tool the board does not have reads
``None``, never an error, because a health report must go out precisely when something is wrong.

The rating chain's head (``chain``: epoch, ``n`` and digest of the newest chained event, from the
store's meta) lets the server vouch for the newest rating too: the chain itself shows the loss or
change of any event that has a successor, and the head reported here stands for that successor.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from edge.store import Outbox
from edge.store.chain import META_HEAD
from edge.sync.undeliverable import undeliverable_count

log = logging.getLogger(__name__)

#: Where the kernel lists its thermal zones (a Pi has one, ``cpu-thermal``; a PC several, or none).
THERMAL_ROOT = Path("/sys/class/thermal")
#: How long ``vcgencmd get_throttled`` may take before it is given up for this report.
VCGENCMD_TIMEOUT_S = 5.0

#: The bits of ``vcgencmd get_throttled``: (bit, flag) — now in bits 0-3, since boot in bits 16-19.
THROTTLED_BITS = (
    (0, "under_voltage"),
    (1, "freq_capped"),
    (2, "throttled"),
    (3, "soft_temp_limit"),
    (16, "under_voltage_occurred"),
    (17, "freq_capped_occurred"),
    (18, "throttled_occurred"),
    (19, "soft_temp_limit_occurred"),
)

#: Modules that cost megabytes and that an idle device loads only if its role needs them.
HEAVY_MODULES = ("numpy", "cv2", "av", "sounddevice", "soundfile", "pymodbus")


def thermal_zones(root: Path = THERMAL_ROOT) -> dict[str, float]:
    """Each thermal zone's temperature in °C, keyed by its type (``cpu-thermal``...) or its name."""
    zones: dict[str, float] = {}
    for zone in sorted(root.glob("thermal_zone*")):
        try:
            millis = int((zone / "temp").read_text().strip())
        except (OSError, ValueError):
            continue  # some zones refuse to be read (a sensor that is off): not a health problem
        try:
            name = (zone / "type").read_text().strip() or zone.name
        except OSError:
            name = zone.name
        if name in zones:
            name = f"{name}/{zone.name}"
        zones[name] = round(millis / 1000.0, 1)
    return zones


def cpu_temp_c(root: Path = THERMAL_ROOT) -> float | None:
    """The CPU temperature in °C: the zone named for the CPU if there is one, else the hottest; None without any."""
    zones = thermal_zones(root)
    if not zones:
        return None
    cpu = [t for name, t in zones.items() if "cpu" in name.lower() or "x86_pkg" in name]
    return max(cpu or zones.values())


def decode_throttled(text: str) -> dict[str, Any]:
    """Decode ``vcgencmd get_throttled`` output (``throttled=0x50005``) into its flags.

    Raises ValueError for anything else (an error message of vcgencmd, for one).
    """
    key, sep, value = text.strip().partition("=")
    if key != "throttled" or not sep:
        raise ValueError(f"not vcgencmd get_throttled output: {text.strip()!r}")
    bits = int(value.strip(), 16)
    return {"raw": f"0x{bits:x}", **{flag: bool(bits >> bit & 1) for bit, flag in THROTTLED_BITS}}


def read_throttled() -> dict[str, Any] | None:
    """The Pi's under-voltage and throttling flags, or None where ``vcgencmd`` is missing or fails."""
    tool = shutil.which("vcgencmd")
    if tool is None:
        return None
    try:
        done = subprocess.run(
            [tool, "get_throttled"], capture_output=True, text=True, timeout=VCGENCMD_TIMEOUT_S, check=False
        )
        return decode_throttled(done.stdout)
    except (OSError, subprocess.TimeoutExpired, ValueError) as exc:
        log.warning("vcgencmd get_throttled gave nothing usable: %s", exc)
        return None


def meminfo() -> dict[str, int]:
    """``MemTotal`` and ``MemAvailable`` from /proc/meminfo, in bytes (empty where it cannot be read)."""
    found: dict[str, int] = {}
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for row in f:
                key, _, rest = row.partition(":")
                if key in ("MemTotal", "MemAvailable"):
                    found[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError):
        return {}
    return found


def mem_available_bytes() -> int | None:
    """``MemAvailable`` in bytes, or None."""
    return meminfo().get("MemAvailable")


def process_rss_bytes(pid: int | str = "self") -> int | None:
    """Resident memory of a process (this one by default), from /proc/<pid>/status."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for row in f:
                if row.startswith("VmRSS:"):
                    return int(row.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def heavy_modules() -> list[str]:
    """Which of :data:`HEAVY_MODULES` this process has loaded: what its idle memory is spent on."""
    return [name for name in HEAVY_MODULES if name in sys.modules]


def chain_head(outbox: Outbox) -> dict[str, Any] | None:
    """The rating chain's head from the store's meta (``epoch``, ``n``, ``digest``); None before the
    first chained event or if the recorded head cannot be read (the store logs that when it next links)."""
    raw = outbox.get_meta(META_HEAD)
    if raw is None:
        return None
    try:
        head = json.loads(raw)
        return {"epoch": str(head["epoch"]), "n": int(head["n"]), "digest": str(head["digest"])}
    except (TypeError, ValueError, KeyError):
        return None


def health_data(outbox: Outbox, started_monotonic: float, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``data`` of a ``health`` event; ``extra`` (the daemon's link, boot...) is merged in last."""
    stats = outbox.stats()
    age = stats.oldest_pending_age_s
    memory = meminfo()
    return {
        "uptime_s": round(time.monotonic() - started_monotonic, 1),
        "cpu_temp_c": cpu_temp_c(),
        "thermal_c": thermal_zones(),
        "throttled": read_throttled(),
        "load": [round(x, 2) for x in os.getloadavg()],
        "mem_total_bytes": memory.get("MemTotal"),
        "mem_available_bytes": memory.get("MemAvailable"),
        "rss_bytes": process_rss_bytes(),
        "heavy_modules": heavy_modules(),
        "disk_free_bytes": shutil.disk_usage(outbox.path.parent).free,
        "queue_depth": stats.depth,
        "oldest_pending_age_s": None if age is None else round(age, 1),
        "store_bytes": stats.db_bytes,
        "evictions": stats.evictions,
        # Events refused because the state disk was full (counted once there was room again).
        "refused_disk_full": stats.counters.get("refused_disk_full", 0),
        "undeliverable": undeliverable_count(outbox),
        "clock_synced": outbox.clock.synced(),
        "chain": chain_head(outbox),
        **(extra or {}),
    }
