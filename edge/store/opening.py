"""Opening the daemon's store on a disk that may be full: wait for room instead of exiting.

A daemon that exits because its card is full is started again by systemd every ``RestartSec``, and
after ``StartLimitBurst`` starts (about 50 s of them) the unit is left failed: the device stays dead
after space returns, until someone comes. SQLite cannot open a WAL database on a disk without room
for its ``-shm`` file (32 KiB) or for the first commit, so :func:`open_when_room` takes the state
directory's lock, says what it waits for (in the lock's note, which rewrites a block the file
already has, and to its caller), and tries again: at once when free space grows, and at least
every :data:`RETRY_MAX_S` whatever ``statvfs`` says (root's reserve, another process's files).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge.clock import now_iso
from edge.exceptions import StoreFull
from edge.store.host import DaemonLock, private_dir
from edge.store.outbox import Outbox, free_bytes

if TYPE_CHECKING:
    from edge.config import EdgeConfig

log = logging.getLogger(__name__)

#: The first retry comes after this, each later one after twice the last, up to :data:`RETRY_MAX_S`.
RETRY_MIN_S = 1.0
RETRY_MAX_S = 30.0
#: How often free space is looked at between retries (a ``statvfs``; a retry follows when it grew).
FREE_CHECK_S = 1.0


def waiting_note(previous: dict[str, Any], since: str, reason: str, state_dir: Path) -> dict[str, Any]:
    """The lock's note while the store cannot be opened: the disk is full (since the last daemon
    found it so, if it was killed while full, whose refusals are carried over, uncounted yet), why
    this daemon waits, and that it has not started its link."""
    last = previous.get("disk_full")
    last = last if isinstance(last, dict) else {}
    return {
        "disk_full": {**last, "since": last.get("since") or since, "dir": str(state_dir), "waiting": reason},
        "link": {"state": "not started", "since": since},
    }


def open_when_room(
    config: EdgeConfig,
    stop: threading.Event,
    *,
    beat: Callable[[], None] = lambda: None,
    on_waiting: Callable[[str], None] = lambda reason: None,
) -> Outbox | None:
    """The device's store, opened by its owner (``edge run``) as soon as the disk has room for it;
    None if ``stop`` is set first.

    ``beat()`` is called at every round of the wait (at least once a second), for a watchdog to
    tell waiting from hanging; ``on_waiting(reason)`` once, when the first attempt finds the disk
    full. Only a full disk is waited for: any other error (another ``edge run`` holds the lock, a
    read-only file system) is raised, as before.
    """
    state_dir = config.store.state_dir
    lock: DaemonLock | None = None
    since: str | None = None
    waited_from = time.monotonic()
    interval = RETRY_MIN_S
    try:
        while True:
            beat()
            try:
                # The directory (a block of its own on a first start) and the lock, then the store.
                private_dir(state_dir, tighten=True)
                if lock is None:
                    lock = DaemonLock(state_dir)
                outbox = Outbox.from_config(config, owner=True, lock=lock)
            except StoreFull as exc:
                reason = str(exc)
            else:
                lock = None  # the store's now
                if since is not None:
                    log.warning(
                        "the disk holding %s has room again: the event store is open, after waiting %.0f s",
                        state_dir,
                        time.monotonic() - waited_from,
                    )
                return outbox
            if since is None:
                since = now_iso()
                log.error(
                    "%s; waiting for room (trying again whenever free space grows, and every %.0f s at most): "
                    "nothing is taken until then, and a serial panel keeps its presses",
                    reason,
                    RETRY_MAX_S,
                )
                on_waiting(reason)
            if lock is not None:
                lock.note(waiting_note(lock.previous, since, reason, state_dir))
            free = free_bytes(state_dir) or 0
            deadline = time.monotonic() + interval
            while (left := deadline - time.monotonic()) > 0:
                if stop.wait(min(left, FREE_CHECK_S)):
                    return None
                beat()
                if (free_bytes(state_dir) or 0) > free:
                    break
            interval = min(interval * 2, RETRY_MAX_S)
    finally:
        if lock is not None:
            lock.release()
