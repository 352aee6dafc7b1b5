"""A simulated rating-panel microcontroller on a pseudo-terminal, speaking firmware_config/PROTOCOL.md.

The driver under test opens :attr:`SerialMcu.path` with real pyserial, exactly as it opens
``/dev/ttyUSB0`` on a Pi. The simulator behaves like the firmware: HELLO at boot and on PING, HB
every ``hb_ms``, each press sent as BTN and repeated every ``repeat_ms`` until ACKed (a bounded queue
of unacknowledged presses, as a small MCU has), LED/BEEP/CFG recorded, CFG ``hb_ms`` and
``repeat_ms`` obeyed. Line trouble is injected with :class:`Noise`; :meth:`SerialMcu.unplug` and
:meth:`SerialMcu.replug` close the pty and open a new one, re-pointing an optional symlink the way
udev re-points ``/dev/serial/by-id/...`` when a USB device comes back as a new ``/dev/ttyUSB*``.

Test handles: :meth:`press`, :meth:`wait_acked`, :attr:`leds`, :attr:`beeps`, :attr:`cfg`,
:attr:`pings`, :meth:`send_err`, :meth:`send_raw`, :meth:`silence`, :meth:`reboot`, :attr:`stats`.

All I/O happens on the simulator's own thread; the handles hand work to it, so no file descriptor is
closed under a ``select()``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import random
import select
import threading
import time
import tty
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from drivers.panel.protocol import (
    HOST_FRAMES,
    MAX_MSEQ,
    MAX_UPTIME_MS,
    PROTOCOL_VERSION,
    Ack,
    Beep,
    Btn,
    Cfg,
    Err,
    Frame,
    FrameParser,
    Hb,
    Hello,
    Led,
    Ping,
)

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class Noise:
    """Line trouble to inject on the MCU → host direction (fractions of frames, 0..1)."""

    corrupt: float = 0.0
    """Frames with one byte changed, deleted, or the frame cut short (all must fail CRC or grammar)."""
    duplicate: float = 0.0
    """Frames sent twice in a row."""
    split: float = 0.0
    """Frames written in two pieces with a short pause, so the host reads them in two parts."""
    garbage: float = 0.0
    """Frames preceded by a burst of random bytes."""
    drop_acks: float = 0.0
    """ACK frames from the host ignored, as if lost on the wire (host → MCU)."""


@dataclass(frozen=True)
class SimPress:
    """A press made with :meth:`SerialMcu.press`, as the MCU numbered it."""

    button: int
    mseq: int
    uptime_ms: int

    @property
    def key(self) -> str:
        """The identity the driver gives this press (:attr:`drivers.panel.base.Press.key`)."""
        return f"{self.button}:{self.mseq}:{self.uptime_ms}"


@dataclass
class SimStats:
    """What the simulator did."""

    frames_sent: int = 0
    btn_sent: int = 0
    repeats: int = 0
    corrupted: int = 0
    duplicated: int = 0
    split: int = 0
    garbage: int = 0
    overflow: int = 0
    """Bytes the host did not read in time (pty buffer full); the frame is lost, as on a UART."""
    acks: int = 0
    acks_dropped: int = 0
    stray_acks: int = 0
    """ACKs for no pending press (a repeat ACK after the first one got through)."""
    host_verbs: Counter[str] = field(default_factory=Counter)


@dataclass
class _Pending:
    press: SimPress
    last_sent: float


class SerialMcu:
    """A simulated panel MCU. Use as a context manager, or call :meth:`start` and :meth:`close`.

    ``link``: a symlink path kept pointing at the current pty (removed while unplugged), like a
    ``/dev/serial/by-id`` link; :attr:`path` is the link if given, else the pty itself.
    """

    def __init__(
        self,
        *,
        buttons: int = 4,
        model: str = "ce-panel-4",
        fw: str = "1.2.0",
        proto: int = PROTOCOL_VERSION,
        hb_ms: int = 1000,
        repeat_ms: int = 500,
        max_pending: int = 8,
        noise: Noise | None = None,
        link: str | Path | None = None,
        seed: int | None = None,
        reject_cfg: tuple[str, ...] = (),
    ) -> None:
        self.buttons = buttons
        self.model = model
        self.fw = fw
        self.proto = proto
        self.hb_s = hb_ms / 1000
        self.repeat_s = repeat_ms / 1000
        self.max_pending = max_pending
        self.noise = noise or Noise()
        self.link = Path(link) if link is not None else None
        self.reject_cfg = reject_cfg
        self.stats = SimStats()
        self.leds: dict[str, str] = {}
        self.led_log: list[tuple[str, str]] = []
        self.beeps: list[int] = []
        self.cfg: dict[str, str] = {}
        self.cfg_frames = 0
        self.pings = 0
        self.host_frames: deque[Frame] = deque(maxlen=2000)
        self.acked: list[SimPress] = []

        self._rng = random.Random(seed)
        self._lock = threading.Condition()
        self._unsent: deque[SimPress] = deque()
        self._pending: dict[int, _Pending] = {}
        self._mseq = 0
        self._boot = time.monotonic()
        self._silent = False
        self._master: int | None = None
        self._slave: int | None = None
        self._pty_path: str | None = None
        self._last_pty: str | None = None
        self._parser = FrameParser(HOST_FRAMES)
        self._next_hb = 0.0
        self._commands: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._running = False
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> Self:
        """Plug in (open the pty, send HELLO as at boot) and start the MCU's thread."""
        self._plug(new_path=False)
        self._boot_now()
        self._running = True
        self._thread = threading.Thread(target=self._run, name="sim-mcu", daemon=True)
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

    @property
    def uptime_ms(self) -> int:
        """Milliseconds since the (simulated) MCU booted."""
        return int((time.monotonic() - self._boot) * 1000) & MAX_UPTIME_MS

    # -- test handles ------------------------------------------------------------------------------

    def press(self, button: int) -> SimPress:
        """A citizen presses ``button``; the MCU numbers the press now and sends it when it can."""
        if not 1 <= button <= self.buttons:
            raise ValueError(f"button must be 1..{self.buttons}")
        with self._lock:
            p = SimPress(button, self._mseq, self.uptime_ms)
            self._mseq = (self._mseq + 1) & MAX_MSEQ
            self._unsent.append(p)
        self._wake()
        return p

    @property
    def unacked(self) -> int:
        """Presses not yet acknowledged by the host (sent or still queued)."""
        with self._lock:
            return len(self._unsent) + len(self._pending)

    def wait_acked(self, count: int, timeout: float = 10.0) -> bool:
        """Wait until at least ``count`` presses have been acknowledged; False on timeout."""
        with self._lock:
            return self._lock.wait_for(lambda: len(self.acked) >= count, timeout)

    def wait_for(self, predicate: Callable[[SerialMcu], bool], timeout: float = 10.0) -> bool:
        """Wait until ``predicate(self)`` holds; False on timeout.

        Checked whenever the MCU handles a host frame, and every few milliseconds for what changes
        without one (repeats, noise counters).
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            while not predicate(self):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._lock.wait(min(remaining, 0.01))
            return True

    def send_err(self, code: str, text: str = "") -> None:
        """Send ``ERR <code> <text>`` (e.g. ``STUCK 2``)."""
        self._call(lambda: self._emit(Err(code, text).encode(), noisy=False))

    def send_raw(self, data: bytes) -> None:
        """Write raw bytes to the host (garbage, a hand-made frame...)."""
        self._call(lambda: self._write(data))

    def silence(self, silent: bool = True) -> None:
        """Stop (or resume) all output, as a hung MCU would; the port stays open."""
        with self._lock:
            self._silent = silent
            self._next_hb = 0.0
        self._wake()

    def reboot(self) -> None:
        """Restart the MCU: uptime and mseq from 0, unacknowledged presses lost, HELLO sent."""
        self._call(self._boot_now)

    def unplug(self) -> None:
        """Pull the USB cable: close the pty (the host's reads fail) and remove the link."""
        self._call(self._unplug)

    def replug(self, *, new_path: bool = True, reboot: bool = True) -> str:
        """Plug back in, on a new pty path unless ``new_path`` is False (then possibly the same one).

        ``reboot`` (the default, as a USB-powered MCU loses power when unplugged) restarts it; with
        False it keeps its presses and keeps repeating them. Returns the new pty path.
        """

        def do() -> str:
            self._plug(new_path=new_path)
            if reboot:
                self._boot_now()
            return self._pty_path or ""

        return self._call(do)

    # -- the MCU's thread --------------------------------------------------------------------------

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
                    data = b""  # no host has the slave open: nothing to read
                for frame in self._parser.feed(data):
                    self._on_host_frame(frame)

    def _step(self, now: float) -> float:
        """Send what is due (heartbeat, new presses, repeats); return seconds until the next duty."""
        if self._master is None:
            return 1.0
        with self._lock:
            silent = self._silent
        if now >= self._next_hb:
            if not silent:
                self._emit(Hb(self.uptime_ms).encode())
            self._next_hb = now + self.hb_s
        to_send: list[bytes] = []
        with self._lock:
            while self._unsent and len(self._pending) < self.max_pending:
                p = self._unsent.popleft()
                self._pending[p.mseq] = _Pending(p, now)
                to_send.append(Btn(p.button, p.mseq, p.uptime_ms).encode())
                self.stats.btn_sent += 1
            next_due = self._next_hb
            for pend in self._pending.values():
                if now - pend.last_sent >= self.repeat_s:
                    pend.last_sent = now
                    to_send.append(Btn(pend.press.button, pend.press.mseq, pend.press.uptime_ms).encode())
                    self.stats.repeats += 1
                next_due = min(next_due, pend.last_sent + self.repeat_s)
        if not silent:
            for data in to_send:
                self._emit(data)
        return max(0.0, min(next_due - now, 1.0))

    def _on_host_frame(self, frame: Frame) -> None:
        with self._lock:
            self.stats.host_verbs[frame.verb] += 1
            self.host_frames.append(frame)
            if isinstance(frame, Ack):
                if self._rng.random() < self.noise.drop_acks:
                    self.stats.acks_dropped += 1
                else:
                    pend = self._pending.pop(frame.mseq, None)
                    if pend is None:
                        self.stats.stray_acks += 1
                    else:
                        self.stats.acks += 1
                        self.acked.append(pend.press)
            elif isinstance(frame, Led):
                self.leds[str(frame.target)] = frame.mode
                self.led_log.append((str(frame.target), frame.mode))
            elif isinstance(frame, Beep):
                self.beeps.append(frame.ms)
            elif isinstance(frame, Cfg):
                self.cfg_frames += 1
                for key, value in frame.settings:
                    self.cfg[key] = value
                    if key == "hb_ms" and value.isdigit():
                        self.hb_s = int(value) / 1000
                        self._next_hb = min(self._next_hb, time.monotonic() + self.hb_s)
                    elif key == "repeat_ms" and value.isdigit():
                        self.repeat_s = int(value) / 1000
            elif isinstance(frame, Ping):
                self.pings += 1
            self._lock.notify_all()
        if isinstance(frame, Ping):
            self._emit(self._hello())
        elif isinstance(frame, Cfg):
            for key, _ in frame.settings:
                if key in self.reject_cfg:
                    self._emit(Err("BADCFG", key).encode())

    # -- helpers (MCU thread, or before it runs) ---------------------------------------------------

    def _hello(self) -> bytes:
        return Hello(self.proto, self.fw, self.model, self.buttons).encode()

    def _boot_now(self) -> None:
        with self._lock:
            self._boot = time.monotonic()
            self._mseq = 0
            self._pending.clear()
            self._unsent.clear()
            self._next_hb = 0.0
        self._emit(self._hello())

    def _plug(self, *, new_path: bool) -> None:
        old = self._last_pty
        master, slave = os.openpty()
        spare = None
        if new_path and os.ttyname(slave) == old:
            # The kernel reused the old number; take the next one, as a re-enumerated USB device would.
            spare = (master, slave)
            master, slave = os.openpty()
        if spare is not None:
            os.close(spare[0])
            os.close(spare[1])
        tty.setraw(slave)  # no echo, no CR/LF translation, before the host opens it
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        self._pty_path = self._last_pty = os.ttyname(slave)
        self._parser.reset()
        if self.link is not None:
            tmp = self.link.with_name(self.link.name + ".tmp")
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            tmp.symlink_to(self._pty_path)
            os.replace(tmp, self.link)  # atomic, as udev does it
        log.debug("sim MCU plugged in at %s", self._pty_path)

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

    def _emit(self, data: bytes, *, noisy: bool = True) -> None:
        """Send one frame, with the configured noise."""
        n, rng = self.noise, self._rng
        self.stats.frames_sent += 1
        if noisy and rng.random() < n.corrupt:
            data = self._corrupt(data)
            self.stats.corrupted += 1
        if noisy and rng.random() < n.garbage:
            self.stats.garbage += 1
            self._write(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 24))))
        if noisy and rng.random() < n.split and len(data) > 2:
            self.stats.split += 1
            cut = rng.randrange(1, len(data) - 1)
            self._write(data[:cut])
            time.sleep(0.002)  # let the host's read() return the first part on its own
            self._write(data[cut:])
        else:
            self._write(data)
        if noisy and rng.random() < n.duplicate:
            self.stats.duplicated += 1
            self._write(data)

    def _corrupt(self, data: bytes) -> bytes:
        rng = self._rng
        how = rng.randrange(3)
        pos = rng.randrange(1, len(data) - 1)  # keep the leading '$' (else the frame just vanishes)
        if how == 0:  # one byte changed
            new = rng.choice([b for b in range(32, 127) if b != data[pos]])
            return data[:pos] + bytes([new]) + data[pos + 1 :]
        if how == 1:  # one byte lost
            return data[:pos] + data[pos + 1 :]
        return data[:pos]  # the rest of the frame lost (no line end: the next '$' resyncs)

    def _write(self, data: bytes) -> None:
        if self._master is None:
            return
        try:
            written = os.write(self._master, data)
        except BlockingIOError:
            written = 0
        except OSError:
            return
        if written < len(data):
            self.stats.overflow += len(data) - written

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"x")

    def _call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the MCU's thread and return its result."""
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
            raise TimeoutError("the simulated MCU did not respond")
        if "error" in box:
            raise box["error"]
        return box["result"]  # type: ignore[no-any-return]
