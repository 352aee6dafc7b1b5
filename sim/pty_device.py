"""A simulated USB serial device on a pseudo-terminal: the pty pair, the USB cable, the device's thread.

:class:`PtyDevice` is what the simulated relay boards (:mod:`sim.serial_relay`) and the simulated panel
MCU (:mod:`sim.serial_mcu`) have in common. The driver under test opens :attr:`PtyDevice.path` with real
pyserial, exactly as it opens ``/dev/ttyUSB0`` on a Pi. :meth:`PtyDevice.unplug` and
:meth:`PtyDevice._plug` close the pty and open a new one, re-pointing an optional symlink the way udev
re-points ``/dev/serial/by-id/...`` when a USB device comes back as a new ``/dev/ttyUSB*``.

All I/O happens on the device's own thread; test handles hand work to it with :meth:`PtyDevice._call`,
so no file descriptor is closed under a ``select()``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import select
import threading
import time
import tty
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Self, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class PtyDevice(ABC):
    """A device on a pty. Use as a context manager, or call :meth:`start` and :meth:`close`.

    ``link``: a symlink path kept pointing at the current pty (removed while unplugged), like a
    ``/dev/serial/by-id`` link; :attr:`path` is the link if given, else the pty itself.
    """

    kind: ClassVar[str] = "device"
    """What the device is, for logs and errors ("relay board", "MCU")."""
    wait_poll_s: ClassVar[float] = 0.05
    """How often :meth:`wait_for` re-checks what changes without a notification."""

    def __init__(self, *, link: str | Path | None = None) -> None:
        self.link = Path(link) if link is not None else None
        self._lock = threading.Condition()
        self._master: int | None = None
        self._slave: int | None = None
        self._pty_path: str | None = None
        self._last_pty: str | None = None
        self._commands: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._running = False
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> Self:
        """Plug in (open the pty, power the device up) and start the device's thread."""
        self._plug(new_path=False)
        self._power_up()
        self._running = True
        self._thread = threading.Thread(target=self._run, name=self._thread_name(), daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop the thread and unplug. Idempotent."""
        if not self._running:
            return
        self._running = False
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._unplug()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def path(self) -> str:
        """What the driver should open: the link if one was given, else the current pty."""
        if self.link is not None:
            return str(self.link)
        assert self._pty_path is not None, "unplugged"
        return self._pty_path

    @property
    def pty_path(self) -> str | None:
        """The current pty slave path (``/dev/pts/N``), None while unplugged."""
        return self._pty_path

    # -- test handles ------------------------------------------------------------------------------

    def unplug(self) -> None:
        """Pull the USB cable: close the pty (the host's reads and writes fail) and remove the link."""
        self._call(self._unplug)

    def wait_for(self, predicate: Callable[[Self], bool], timeout: float = 10.0) -> bool:
        """Wait until ``predicate(self)`` holds; False on timeout.

        Checked whenever the device handles what the host sent, and every :attr:`wait_poll_s` for what
        changes without it.
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            while not predicate(self):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._lock.wait(min(remaining, self.wait_poll_s))
            return True

    # -- for the devices ---------------------------------------------------------------------------

    @abstractmethod
    def _received(self, data: bytes) -> None:
        """Handle bytes from the host (device thread, lock not held)."""

    def _power_up(self) -> None:  # noqa: B027 - an optional hook: a relay board does nothing at power-up
        """What the device does when it first gets power, before its thread runs (nothing by default)."""

    def _step(self, now: float) -> float:
        """Do what is due at ``now`` (device thread); return the seconds until the next duty."""
        return 1.0

    def _thread_name(self) -> str:
        return f"sim-{type(self).__name__}"

    def _write(self, data: bytes) -> int:
        """Write ``data`` to the host; return how many bytes the pty's full buffer refused.

        Nothing is written, and nothing counted as refused, while unplugged or when the write fails.
        """
        if self._master is None:
            return 0
        try:
            written = os.write(self._master, data)
        except BlockingIOError:
            written = 0
        except OSError:
            return 0
        return len(data) - written

    # -- the device's thread -----------------------------------------------------------------------

    def _run(self) -> None:
        while self._running:
            timeout = self._step(time.monotonic())
            fds = [self._wake_r] + ([self._master] if self._master is not None else [])
            try:
                ready, _, _ = select.select(fds, [], [], timeout)
            except (OSError, ValueError):
                continue
            if self._wake_r in ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 4096)
            while True:
                try:
                    cmd = self._commands.get_nowait()
                except queue.Empty:
                    break
                cmd()
            if self._master is not None and self._master in ready:
                try:
                    data = os.read(self._master, 4096)
                except OSError:
                    # No host has the slave open (EIO): nothing to read until one does.
                    time.sleep(0.01)
                    continue
                self._received(data)

    def _plug(self, *, new_path: bool) -> None:
        """Open a new pty (a new path unless ``new_path`` is False) and point the link at it."""
        old = self._last_pty
        master, slave = os.openpty()
        if new_path and os.ttyname(slave) == old:
            # The kernel reused the old number; take the next one, as a re-enumerated USB device would.
            spare = (master, slave)
            master, slave = os.openpty()
            os.close(spare[0])
            os.close(spare[1])
        tty.setraw(slave)  # no echo, no CR/LF translation, before the host opens it
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        self._pty_path = self._last_pty = os.ttyname(slave)
        if self.link is not None:
            tmp = self.link.with_name(self.link.name + ".tmp")
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            tmp.symlink_to(self._pty_path)
            os.replace(tmp, self.link)  # atomic, as udev does it
        log.debug("sim %s plugged in at %s", self.kind, self._pty_path)

    def _unplug(self) -> None:
        if self.link is not None:
            with contextlib.suppress(FileNotFoundError):
                self.link.unlink()
        for fd in (self._master, self._slave):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._master = self._slave = None
        self._pty_path = None

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"x")

    def _call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the device's thread and return its result."""
        if not self._running:
            return fn()
        done = threading.Event()
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                box["result"] = fn()
            except BaseException as exc:  # handed back to the caller's thread
                box["error"] = exc
            finally:
                done.set()

        self._commands.put(run)
        self._wake()
        if not done.wait(timeout=10):
            raise TimeoutError(f"the simulated {self.kind} did not respond")
        if "error" in box:
            raise box["error"]
        return box["result"]  # type: ignore[no-any-return]
