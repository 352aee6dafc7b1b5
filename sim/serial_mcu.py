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

import random
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path

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
from sim.pty_device import PtyDevice


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


class SerialMcu(PtyDevice):
    """A simulated panel MCU. Use as a context manager, or call :meth:`start` and :meth:`close`.

    ``link``: a symlink path kept pointing at the current pty (removed while unplugged), like a
    ``/dev/serial/by-id`` link; :attr:`path` is the link if given, else the pty itself.
    """

    kind = "MCU"
    # Repeats and noise counters change between host frames; wait_for looks often.
    wait_poll_s = 0.01

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
        super().__init__(link=link)
        self.buttons = buttons
        self.model = model
        self.fw = fw
        self.proto = proto
        self.hb_s = hb_ms / 1000
        self.repeat_s = repeat_ms / 1000
        self.max_pending = max_pending
        self.noise = noise or Noise()
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
        self._unsent: deque[SimPress] = deque()
        self._pending: dict[int, _Pending] = {}
        self._mseq = 0
        self._boot = time.monotonic()
        self._silent = False
        self._parser = FrameParser(HOST_FRAMES)
        self._next_hb = 0.0

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

    def _received(self, data: bytes) -> None:
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

    def _thread_name(self) -> str:
        return "sim-mcu"

    def _power_up(self) -> None:
        self._boot_now()

    def _plug(self, *, new_path: bool) -> None:
        # A new pty starts a new line: a frame cut short by the unplug must not join the next one.
        self._parser.reset()
        super()._plug(new_path=new_path)

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

    def _write(self, data: bytes) -> int:
        refused = super()._write(data)
        self.stats.overflow += refused
        return refused
