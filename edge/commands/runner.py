"""Where accepted commands run, so that none waits long behind another.

The command channel verifies, checks for replays and journals each command on its intake thread, in
arrival order (all quick); the handler then runs here, on a lane chosen by its registration:

- **urgent** (``broadcast.stop_all``, ``broadcast.cancel``, ``broadcast.play``, or registered
  ``urgent=True``): a lane of its own, which ordinary commands cannot fill: stopping a loudspeaker
  never waits for a ``relay.test`` or a slow ``device.selftest``;
- **serial** (registered ``serial=True``, e.g. ``config.desired``): one lane per command name that
  runs one command at a time, so the command never overlaps itself;
- everything else: a shared lane.

On every lane commands *start in arrival order*, each when the one before it has ended or has run
for :data:`HEAD_OF_LINE_S`, whichever comes first (on a serial lane: when it has ended). Nearly every
handler returns in milliseconds (one that starts something long starts it and returns), so commands
keep their order: ``broadcast.play`` then ``broadcast.cancel`` of the same broadcast means what it
says, and so does ``officer.assign`` then ``rating.open``. A slow one holds the others up for at most
that long, then runs on while they go ahead; a lane runs at most :data:`WORKERS` (urgent:
:data:`URGENT_WORKERS`) commands at once, and keeps at most :data:`LANE_MAX` waiting: the channel
refuses more as ``busy`` before journaling them.

Each command runs on a thread of its own, a daemon thread: a handler stuck for ever must not keep
the process from exiting when systemd stops it. :meth:`CommandRunner.close` hands back the commands
that never started, so the channel reports them ``interrupted``; :meth:`CommandRunner.join` waits for
the running ones.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from edge.commands.registry import Registration

log = logging.getLogger(__name__)

#: Commands a lane runs at once at most: ordinary ones, and urgent ones.
WORKERS = 4
URGENT_WORKERS = 4

#: How long a running command keeps the next one on its lane from starting.
HEAD_OF_LINE_S = 0.5

#: Commands a lane keeps waiting at most.
LANE_MAX = 100


@dataclass(frozen=True)
class Job:
    """One accepted command, ready to run."""

    cmd_id: str
    name: str
    run: Callable[[], None]


class Lane:
    """Jobs started in order of arrival by one dispatcher thread, each on a thread of its own.

    A job starts when the one before it has ended or has run for ``patience_s`` (None: has ended),
    and when fewer than ``workers`` are running.
    """

    def __init__(
        self, name: str, workers: int, limit: int = LANE_MAX, patience_s: float | None = HEAD_OF_LINE_S
    ) -> None:
        self.name = name
        self.workers = workers
        self.limit = limit
        self.patience_s = patience_s
        self._jobs: deque[Job] = deque()
        self._cond = threading.Condition()
        self._running: set[threading.Thread] = set()
        self._dispatcher: threading.Thread | None = None
        self._closed = False

    def full(self) -> bool:
        """Whether :data:`LANE_MAX` commands are waiting (a closed lane refuses at :meth:`submit`)."""
        with self._cond:
            return len(self._jobs) >= self.limit

    def submit(self, job: Job) -> bool:
        """Queue ``job``; False if the lane is closed or full."""
        with self._cond:
            if self._closed or len(self._jobs) >= self.limit:
                return False
            self._jobs.append(job)
            if self._dispatcher is None:
                self._dispatcher = threading.Thread(target=self._dispatch, name=self.name, daemon=True)
                self._dispatcher.start()
            self._cond.notify_all()
            return True

    def _dispatch(self) -> None:
        while True:
            with self._cond:
                # Take a job only when it can start, so that close() finds every job not started.
                while not self._closed and (not self._jobs or len(self._running) >= self.workers):
                    self._cond.wait()
                if self._closed:
                    return
                job = self._jobs.popleft()
                done = threading.Event()
                thread = threading.Thread(target=self._work, args=(job, done), name=f"{self.name}:{job.name}")
                thread.daemon = True
                self._running.add(thread)
            thread.start()
            done.wait(self.patience_s)

    def _work(self, job: Job, done: threading.Event) -> None:
        try:
            job.run()
        except Exception:
            # The channel's job records its own failures; this only keeps the lane going.
            log.exception("command %s %s failed outside its handler", job.name, job.cmd_id)
        finally:
            done.set()
            with self._cond:
                self._running.discard(threading.current_thread())
                self._cond.notify_all()

    def close(self) -> list[Job]:
        """Take no more jobs; return those that never started. Running ones go on to their end."""
        with self._cond:
            self._closed = True
            left = list(self._jobs)
            self._jobs.clear()
            self._cond.notify_all()
            return left

    def join(self, deadline: float) -> bool:
        """Wait until the running jobs have ended (after :meth:`close`) or ``deadline`` (monotonic)
        passes; True if they have."""
        with self._cond:
            threads = [t for t in (self._dispatcher, *self._running) if t is not None]
        me = threading.current_thread()
        for thread in threads:
            if thread is not me:
                thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in threads if t is not me)


class CommandRunner:
    """The lanes of one command channel (sizes and patience: the module's constants by default)."""

    def __init__(
        self,
        workers: int = WORKERS,
        urgent_workers: int = URGENT_WORKERS,
        limit: int = LANE_MAX,
        patience_s: float = HEAD_OF_LINE_S,
    ) -> None:
        self._lock = threading.Lock()
        self.limit = limit
        self._ordinary = Lane("command", workers, limit, patience_s)
        self._urgent = Lane("command-urgent", urgent_workers, limit, patience_s)
        self._serial: dict[str, Lane] = {}
        self._closed = False

    def lane(self, registration: Registration) -> Lane:
        """The lane ``registration``'s commands run on."""
        if registration.urgent:
            return self._urgent
        if not registration.serial:
            return self._ordinary
        with self._lock:
            lane = self._serial.get(registration.name)
            if lane is None:
                lane = self._serial[registration.name] = Lane(
                    f"command-{registration.name}", 1, self.limit, patience_s=None
                )
                if self._closed:
                    lane.close()
            return lane

    def _lanes(self) -> list[Lane]:
        with self._lock:
            return [self._urgent, self._ordinary, *self._serial.values()]

    def close(self) -> list[Job]:
        """Close every lane; the jobs that never started, in no particular order."""
        with self._lock:
            self._closed = True
        return [job for lane in self._lanes() for job in lane.close()]

    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds in all for running commands to end; True if they all did."""
        deadline = time.monotonic() + timeout
        return all([lane.join(deadline) for lane in self._lanes()])
