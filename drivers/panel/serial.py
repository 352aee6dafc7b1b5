"""Serial panel backend: a microcontroller speaking the panel protocol (DESIGN.md §5) over pyserial.

One reader thread owns the port: it finds and opens it, handshakes (``PING`` → ``HELLO`` → ``CFG``),
reads frames with a timeout (so it sleeps in ``select`` when the line is idle: idle CPU matters on a
Pi), watches the heartbeat, and reopens the port when the device disappears, also under a new
``/dev/ttyUSB*`` name (a ``/dev/serial/by-id`` path follows the device; a USB id is looked up with
``serial.tools.list_ports``).

Exactly-once delivery. The MCU repeats ``BTN <button> <mseq> <uptime_ms>`` unchanged until it gets
``ACK <mseq>``. A press is identified by all three numbers (its :attr:`Press.key`); a repeat of a press
being committed is ignored, a repeat of a press already acknowledged gets its ``ACK`` again (the first
was lost). An ``ACK`` is only sent to the MCU session that sent the press: after the port was
reopened or the MCU restarted, the ACK waits until that press is repeated, because a restarted MCU
counts ``mseq`` from 0 again and a stale ACK would cancel a *new* press, losing a rating.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Literal

import serial
from serial.tools import list_ports

from drivers.panel.base import Panel, PanelEvent, PanelStats, Press
from drivers.panel.protocol import (
    MCU_FRAMES,
    PROTOCOL_VERSION,
    Ack,
    Beep,
    Btn,
    Err,
    Frame,
    FrameParser,
    Hb,
    Hello,
    Led,
    LedMode,
    Ping,
    cfg_frames,
)
from drivers.profiles import SerialProfile, UsbId
from drivers.resources import Resources
from edge.exceptions import BadProfile

log = logging.getLogger(__name__)

#: Acknowledged presses remembered per session, to answer repeats whose first ACK was lost.
ACKED_MEMORY = 4096

#: Heartbeats that may be missed before the panel counts as disconnected (DESIGN.md §5).
MISSED_HEARTBEATS = 3


def find_port(port: str | None, usb: UsbId | None = None) -> str | None:
    """The device path to open now, or None if the panel is not plugged in.

    ``port`` is a device path (``/dev/ttyUSB0``, a ``/dev/serial/by-id/...`` link, a pty) or
    ``usb:VID:PID[:SERIAL]``. A path that does not exist falls back to the profile's USB id, so an
    adapter that came back as ``/dev/ttyUSB1`` is still found.
    """
    match = usb
    if port:
        if port.startswith("usb:"):
            match = UsbId.model_validate(port)
        elif os.path.exists(port):
            return port
    if match is None:
        return None
    for info in sorted(list_ports.comports(), key=lambda i: i.device):
        if info.vid == match.vid and info.pid == match.pid and match.serial_number in (None, info.serial_number):
            return str(info.device)
    return None


def reserve_port(port: str | None, usb: UsbId | None, *, what: str, resources: Resources, holder: str) -> str:
    """Reserve a serial device's port as ``<holder>.port``; return the name it goes by in messages.

    The name is ``port`` as configured (a ``/dev/serial/by-id`` link stays a link), else the profile's
    ``usb`` id. Raises :exc:`BadProfile` (key ``port``) when there is neither, naming ``what`` (panel,
    relay board), and :exc:`ResourceBusy` when another section holds the port.
    """
    if port is None and usb is None:
        raise BadProfile([("port", f"a serial {what} needs a port, or usb: in its profile")])
    name = port or str(usb)
    resources.reserve("serial", name, f"{holder}.port")
    return name


@dataclass
class _PressState:
    mseq: int
    session: int  # the port/MCU session in which the press was last seen


class SerialPanel(Panel):
    """A rating panel behind a microcontroller on a serial port.

    ``port``: a device path or ``usb:VID:PID``; None uses the profile's ``usb`` id. ``reconnect_s`` is
    how often a missing port is looked for again.
    """

    def __init__(
        self,
        profile: SerialProfile,
        *,
        port: str | None = None,
        resources: Resources | None = None,
        holder: str = "panel",
        reconnect_s: float = 0.5,
    ) -> None:
        super().__init__(profile, resources=resources, holder=holder)
        self.profile: SerialProfile = profile
        self._port_name = reserve_port(port, profile.usb, what="panel", resources=self._resources, holder=holder)
        self.port = port
        self._reconnect_s = reconnect_s
        self._hb_s = profile.heartbeat_ms / 1000
        # Wake up a few times per heartbeat to run the watchdog; otherwise sleep in select().
        self._read_timeout = min(0.25, self._hb_s / 4)
        self._parser = FrameParser(MCU_FRAMES)
        self._write_lock = threading.Lock()
        self._ser: serial.Serial | None = None
        self._open_path: str | None = None
        self._state_lock = threading.Lock()
        self._session = 0
        self._in_flight: dict[str, _PressState] = {}
        self._acked: OrderedDict[str, _PressState] = OrderedDict()
        self._last_uptime: int | None = None
        self._hello: Hello | None = None
        self._hello_this_open = False
        self._reported_unknown: set[int] = set()
        self._stop = threading.Event()
        self._reader: threading.Thread | None = None

    # -- Panel -------------------------------------------------------------------------------------

    @property
    def hello(self) -> Hello | None:
        """The last HELLO from the MCU (firmware, model, buttons), if any."""
        return self._hello

    @property
    def mcu_uptime_ms(self) -> int | None:
        """The MCU's uptime from its last heartbeat, None before the first one."""
        return self._last_uptime

    @property
    def port_path(self) -> str | None:
        """The device path currently open, if any."""
        return self._open_path

    @property
    def reader_thread(self) -> threading.Thread | None:
        """The thread that reads the port (and looks for it again when it is lost) until :meth:`close`."""
        return self._reader

    @property
    def stats(self) -> PanelStats:
        """A snapshot of the counters, including the frame parser's."""
        with self._lock:
            return replace(self._stats, frames=replace(self._parser.counters))

    def _start(self) -> None:
        self._reader = threading.Thread(target=self._run, name=f"{self.holder}-serial", daemon=True)
        self._reader.start()

    def _close(self) -> None:
        self._stop.set()
        with self._write_lock:
            if self._ser is not None:
                self._ser.cancel_read()  # wake the reader from select() at once
        if self._reader is not None:
            self._reader.join(timeout=5)
            if self._reader.is_alive():
                log.warning("%s: serial reader did not stop", self.holder)

    def acknowledge(self, press: Press) -> None:
        """Send ``ACK <mseq>`` for a committed press (or hold it until the MCU repeats the press)."""
        if press.key is None or press.mseq is None:
            raise ValueError("not a serial press (it has no key or mseq)")
        with self._state_lock:
            state = self._in_flight.pop(press.key, None)
            if state is None:
                return  # acknowledged already: acknowledge() is idempotent
            self._remember_acked(press.key, state)
            send_now = state.session == self._session
        self._count(acks=1)
        if send_now:
            self._send(Ack(state.mseq))
        else:
            self._count(deferred_acks=1)

    def set_led(self, button: int | Literal["all"], mode: LedMode) -> None:
        """Send ``LED <button|all> <mode>`` (dropped, and counted, while the panel is unplugged)."""
        self._check_led_args(button, mode)
        self._send(Led(button, mode))

    def beep(self, ms: int) -> None:
        """Send ``BEEP <ms>``."""
        self._check_beep_ms(ms)
        self._send(Beep(ms))

    def _press_failed(self, press: Press) -> None:
        # Forget it, so the MCU's next repeat is delivered again.
        if press.key is not None:
            with self._state_lock:
                self._in_flight.pop(press.key, None)

    # -- the reader thread -------------------------------------------------------------------------

    def _run(self) -> None:
        missing_logged = False
        while not self._stop.is_set():
            path = find_port(self.port, self.profile.usb)
            if path is None:
                if not missing_logged:
                    log.warning("%s: serial panel not found at %s", self.holder, self._port_name)
                    missing_logged = True
                self._deliver_event(PanelEvent("disconnected", {"port": self._port_name, "reason": "not_found"}))
                self._stop.wait(self._reconnect_s)
                continue
            missing_logged = False
            try:
                ser = serial.Serial(
                    path,
                    baudrate=self.profile.baudrate,
                    timeout=self._read_timeout,
                    write_timeout=1.0,
                    exclusive=True,  # flock: a second process opening the panel fails loudly
                )
            except (serial.SerialException, OSError) as exc:
                self._count(port_errors=1)
                log.warning("%s: cannot open %s: %s", self.holder, path, exc)
                self._deliver_event(
                    PanelEvent("disconnected", {"port": path, "reason": "open_failed", "error": str(exc)})
                )
                self._stop.wait(self._reconnect_s)
                continue
            reason, error = "closed", ""
            try:
                self._serve(ser, path)
            except (serial.SerialException, OSError) as exc:
                # The USB device went away (or the pty was closed): reopen when it is back.
                reason, error = "port_lost", str(exc)
                self._count(port_errors=1)
                log.warning("%s: lost %s: %s", self.holder, path, exc)
            except Exception as exc:  # a bug here must not end reading for good
                reason, error = "internal_error", repr(exc)
                log.exception("%s: serial reader failed; reopening %s", self.holder, path)
            finally:
                with self._write_lock:
                    self._ser = None
                    self._open_path = None
                with contextlib.suppress(serial.SerialException, OSError):
                    ser.close()
            if not self._stop.is_set():
                self._deliver_event(PanelEvent("disconnected", {"port": path, "reason": reason, "error": error}))
                self._stop.wait(self._reconnect_s)

    def _serve(self, ser: serial.Serial, path: str) -> None:
        """Talk to one opened port until it fails (raises) or the panel closes (returns)."""
        with self._state_lock:
            # A new open may be a new MCU session (it may have rebooted while unplugged): hold
            # back ACKs for earlier presses until the MCU repeats them (see the module docstring).
            self._session += 1
        with self._write_lock:
            self._ser = ser
            self._open_path = path
        with self._lock:
            self._stats.port_opens += 1
            if self._stats.port_opens > 1:
                self._stats.reconnects += 1
        log.info("%s: opened %s", self.holder, path)
        self._parser.reset()
        self._hello_this_open = False
        self._send(Ping())
        last_rx = last_ping = time.monotonic()
        while not self._stop.is_set():
            data = ser.read(ser.in_waiting or 1)
            now = time.monotonic()
            if data:
                frames = self._parser.feed(data)
                if frames:
                    last_rx = now
                for frame in frames:
                    self._handle(frame, now, path)
            if self._connected and now - last_rx > MISSED_HEARTBEATS * self._hb_s:
                self._deliver_event(
                    PanelEvent("disconnected", {"port": path, "reason": "silence", "silent_s": round(now - last_rx, 3)})
                )
            if not self._connected and now - last_ping >= self._hb_s:
                self._send(Ping())  # ask for HELLO until the MCU answers
                last_ping = now

    def _handle(self, frame: Frame, now: float, path: str) -> None:
        if isinstance(frame, Btn):
            self._on_btn(frame, now)
        elif isinstance(frame, Hb):
            self._on_hb(frame)
        elif isinstance(frame, Hello):
            self._on_hello(frame, path)
        elif isinstance(frame, Err):
            self._on_err(frame)
        if not self._connected and self._hello_this_open:
            # Frames are back after a silence: the handshake of this open still holds.
            self._deliver_event(PanelEvent("connected", self._connected_detail(path)))

    def _on_btn(self, frame: Btn, now: float) -> None:
        if frame.button > self.profile.button_count:
            # No score for it: it can never be a rating. ACK it so it does not block the MCU's queue.
            self._count(unknown_buttons=1)
            self._send(Ack(frame.mseq))
            if frame.button not in self._reported_unknown:
                self._reported_unknown.add(frame.button)
                self._deliver_event(
                    PanelEvent(
                        "error", {"code": "unknown_button", "text": f"button {frame.button} is not in the profile"}
                    )
                )
            return
        key = f"{frame.button}:{frame.mseq}:{frame.uptime_ms}"
        with self._state_lock:
            state = self._in_flight.get(key)
            if state is not None:
                action = "ignore"  # still being committed; its ACK follows the commit
            else:
                state = self._acked.get(key)
                if state is not None:
                    action = "reack"  # our ACK was lost (or held back): send it again
                    self._acked.move_to_end(key)
                else:
                    action = "deliver"
                    state = self._in_flight[key] = _PressState(frame.mseq, self._session)
            state.session = self._session
        if action == "deliver":
            self._deliver_press(
                Press(button=frame.button, key=key, mseq=frame.mseq, received_at=now, uptime_ms=frame.uptime_ms)
            )
            return
        self._count(duplicates=1)
        if action == "reack":
            self._count(reacks=1)
            self._send(Ack(frame.mseq))

    def _on_hb(self, frame: Hb) -> None:
        with self._state_lock:
            restarted = self._last_uptime is not None and frame.uptime_ms < self._last_uptime
            self._last_uptime = frame.uptime_ms
            if restarted:
                self._session += 1
                self._acked.clear()
        if restarted:
            # Uptime went backwards: the MCU rebooted (or its 49-day counter wrapped). Its settings are
            # gone, so ask for HELLO and send CFG again.
            self._count(mcu_restarts=1)
            log.warning("%s: the panel MCU restarted (uptime %s ms)", self.holder, frame.uptime_ms)
            self._send(Ping())

    def _on_hello(self, frame: Hello, path: str) -> None:
        with self._state_lock:
            # A HELLO may be the MCU's boot greeting (its mseq restarts at 0) or just the answer to
            # our PING; we cannot tell, so treat it as a new session. The cost is small: an ACK for a
            # press being committed right now waits for the MCU's next repeat of it.
            self._session += 1
        self._hello = frame
        self._hello_this_open = True
        self._count(hellos=1)
        problems = self._firmware_problems(frame)
        if problems:
            log.warning("%s: firmware mismatch: %s", self.holder, "; ".join(problems))
            self._deliver_event(
                PanelEvent(
                    "firmware_mismatch",
                    {
                        "problems": problems,
                        "proto": frame.proto,
                        "fw": frame.fw,
                        "model": frame.model,
                        "buttons": frame.buttons,
                    },
                )
            )
        for cfg in cfg_frames(self.profile.mcu_config):
            self._send(cfg)
        self._deliver_event(PanelEvent("connected", self._connected_detail(path)))

    def _on_err(self, frame: Err) -> None:
        self._count(mcu_errors=1)
        button = int(frame.text) if frame.text.isdigit() else None
        if frame.code == "STUCK" and button is not None:
            self._count(stuck=1)
            self._deliver_event(PanelEvent("stuck", {"button": button}))
        elif frame.code == "FREED" and button is not None:
            self._deliver_event(PanelEvent("released", {"button": button}))
        else:
            log.warning("%s: MCU error %s %s", self.holder, frame.code, frame.text)
            self._deliver_event(PanelEvent("error", {"code": frame.code, "text": frame.text}))

    # -- helpers -----------------------------------------------------------------------------------

    def _firmware_problems(self, hello: Hello) -> list[str]:
        p = self.profile
        found = []
        if hello.proto != PROTOCOL_VERSION:
            found.append(f"protocol {hello.proto}, this host speaks {PROTOCOL_VERSION}")
        if hello.model != p.model:
            found.append(f"model {hello.model}, the profile is for {p.model}")
        if hello.buttons != p.button_count:
            found.append(f"{hello.buttons} buttons, the profile has {p.button_count}")
        if not p.firmware.accepts(hello.fw):
            found.append(f"firmware {hello.fw}, the profile accepts {p.firmware}")
        return found

    def _connected_detail(self, path: str) -> dict[str, object]:
        h = self._hello
        detail: dict[str, object] = {"port": path}
        if h is not None:
            detail.update(fw=h.fw, model=h.model, buttons=h.buttons, proto=h.proto)
        return detail

    def _remember_acked(self, key: str, state: _PressState) -> None:
        self._acked[key] = state
        self._acked.move_to_end(key)
        while len(self._acked) > ACKED_MEMORY:
            self._acked.popitem(last=False)

    def _send(self, frame: Frame) -> bool:
        data = frame.encode()
        with self._write_lock:
            ser = self._ser
            if ser is None:
                self._count(write_errors=1)
                log.debug("%s: not connected; dropped %s", self.holder, frame.body())
                return False
            try:
                ser.write(data)
            except (serial.SerialException, OSError) as exc:
                # The reader notices the lost port and reconnects; a lost ACK is repaired by the
                # MCU's repeat.
                self._count(write_errors=1)
                log.warning("%s: write of %s failed: %s", self.holder, frame.body(), exc)
                return False
        return True
