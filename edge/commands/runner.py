"""Where accepted commands run, so that none waits behind another it has nothing to do with.

The command channel verifies, checks for replays and journals each command on its intake thread, in
arrival order (all quick); the handler then runs here, on a lane chosen by its registration:

- **urgent** (``broadcast.stop_all``, ``broadcast.cancel``, ``broadcast.play``, or registered
  ``urgent=True``): a lane of its own with :data:`URGENT_WORKERS` threads, which ordinary commands
  cannot fill: stopping a loudspeaker never waits for a ``relay.test`` or a slow ``device.selftest``;
- **serial** (registered ``serial=True``, e.g. ``config.desired``): one lane per command name with one
  thread, so the command never overlaps itself and runs in arrival order;
- everything else: a shared lane of :data:`WORKERS` threads.

A lane keeps at most :data:`LANE_MAX` commands waiting; the channel refuses more as ``busy`` before
journaling them (the server's commands never come that fast, but memory is bounded anyway).

Threads are started when needed and are daemon threads: a handler stuck for ever must not keep the
process from exiting when systemd stops it. :meth:`CommandRunner.close` hands back the commands that
never started, so the channel reports them ``interrupted``; :meth:`CommandRunner.join` waits for the
running ones.
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

#: Threads for ordinary commands, and for urgent ones.
WORKERS = 4
URGENT_WORKERS = 4

#: Commands a lane keeps waiting at most.
LANE_MAX = 100


@dataclass(frozen=True)
class Job:
    """One accepted command, ready to run."""

    cmd_id: str
    name: str
    run: Callable[[], None]


class Lane:
    """A queue of jobs and up to ``workers`` threads that run them in order of arrival."""

    def __init__(self, name: str, workers: int, limit: int = LANE_MAX) -> None:
        self.name = name
        self.workers = workers
        self.limit = limit
        self._jobs: deque[Job] = deque()
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._idle = 0
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
            # A job that finds no idle thread gets a new one, up to the lane's size. (A woken thread
            # leaves the idle count and takes a job in one step, so queued jobs beyond the idle
            # threads are exactly those no thread will take soon.)
            if len(self._jobs) > self._idle and len(self._threads) < self.workers:
                thread = threading.Thread(target=self._work, name=f"{self.name}-{len(self._threads) + 1}", daemon=True)
                self._threads.append(thread)
                thread.start()
            else:
                self._cond.notify()
            return True

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._jobs and not self._closed:
                    self._idle += 1
                    self._cond.wait()
                    self._idle -= 1
                if not self._jobs:
                    return
                job = self._jobs.popleft()
            try:
                job.run()
            except Exception:
                # The channel's job records its own failures; this only keeps the thread alive.
                log.exception("command %s %s failed outside its handler", job.name, job.cmd_id)

    def close(self) -> list[Job]:
        """Take no more jobs; return those that never started. Running ones go on to their end."""
        with self._cond:
            self._closed = True
            left = list(self._jobs)
            self._jobs.clear()
            self._cond.notify_all()
            return left

    def join(self, deadline: float) -> bool:
        """Wait until the threads have ended (after :meth:`close`) or ``deadline`` (monotonic) passes;
        True if they have."""
        with self._cond:
            threads = list(self._threads)
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in threads if t is not threading.current_thread())


class CommandRunner:
    """The lanes of one command channel."""

    def __init__(self, workers: int = WORKERS, urgent_workers: int = URGENT_WORKERS, limit: int = LANE_MAX) -> None:
        self._lock = threading.Lock()
        self.limit = limit
        self._ordinary = Lane("command", workers, limit)
        self._urgent = Lane("command-urgent", urgent_workers, limit)
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
                lane = self._serial[registration.name] = Lane(f"command-{registration.name}", 1, self.limit)
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
