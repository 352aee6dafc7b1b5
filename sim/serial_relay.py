"""Simulated USB/serial relay boards on a pseudo-terminal: an LCUS/CH340 board and a Modbus RTU board.

The driver under test opens :attr:`SimRelayBoard.path` with real pyserial (or pymodbus' serial client),
exactly as it opens ``/dev/ttyUSB0`` on a Pi. The boards behave like the hardware:

* :class:`SimLcusBoard` takes ``A0 <channel> <state> <sum>`` frames, checks the sum, switches the relay
  and says nothing; with ``readback=True`` it answers the status query ``0xFF`` with ``CH1: ON`` /
  ``CH1: OFF`` lines, as some LCUS firmware does.
* :class:`SimModbusBoard` is a Modbus RTU slave built on pymodbus' own RTU framer and PDU classes:
  write single coil (05), write multiple coils (15) and read coils (01) for its unit id, an exception
  response for an address it does not have, silence for other unit ids.

Trouble is injected with :meth:`SimRelayBoard.silence` (a hung board: the port stays, nothing is done
or answered) and :meth:`SimRelayBoard.unplug` / :meth:`SimRelayBoard.replug` (the USB cable: the pty is
closed and a new one opened, re-pointing an optional symlink as udev re-points ``/dev/serial/by-id``).

All I/O happens on the board's own thread; the handles hand work to it, so no file descriptor is
closed under a ``select()``.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.exceptions import ModbusException
from pymodbus.framer import FramerRTU
from pymodbus.pdu import DecodePDU, ExceptionResponse, ModbusPDU
from pymodbus.pdu.bit_message import (
    ReadCoilsRequest,
    ReadCoilsResponse,
    WriteMultipleCoilsRequest,
    WriteMultipleCoilsResponse,
    WriteSingleCoilRequest,
    WriteSingleCoilResponse,
)

from drivers.relay.lcus import START, lcus_frame
from drivers.relay.profile import LcusRelayProfile, ModbusRelayProfile, RelayProfile
from sim.pty_device import PtyDevice


class SimRelayBoard(PtyDevice):
    """A relay board on a pty. Use as a context manager, or call :meth:`start` and :meth:`close`.

    ``relays``: how many relays the board has (numbered from 1 for LCUS, coils from 0 for Modbus).
    ``link``: a symlink kept pointing at the current pty (removed while unplugged), like a
    ``/dev/serial/by-id`` link; :attr:`path` is the link if given, else the pty itself. ``closed``:
    relays already closed at power-on, as a previous process might have left them.
    """

    kind = "relay board"

    def __init__(self, relays: int, *, link: str | Path | None = None, closed: Mapping[int, bool] | None = None):
        super().__init__(link=link)
        self.relays = relays
        self._states: dict[int, bool] = {n: False for n in self._numbers()}
        for number, state in (closed or {}).items():
            self._check_number(number)
            self._states[number] = state
        self.switch_log: list[tuple[int, bool]] = []
        """Every relay the board switched, in order, as ``(number, closed)``."""
        self._silent = False

    # -- test handles ------------------------------------------------------------------------------

    def states(self) -> dict[int, bool]:
        """Every relay's state (closed: True) by number."""
        with self._lock:
            return dict(self._states)

    def named_states(self, profile: RelayProfile) -> dict[str, bool]:
        """Every relay of ``profile`` by name (amplifier first), closed or open, as this board has them."""
        with self._lock:
            return {name: self._states[self._number_of(spec)] for name, _, spec in profile.relays()}

    def is_closed(self, number: int) -> bool:
        """Whether relay ``number`` is closed now."""
        with self._lock:
            return self._states[number]

    def silence(self, silent: bool = True) -> None:
        """Hang (or recover): the port stays open, but nothing is switched or answered meanwhile."""
        with self._lock:
            self._silent = silent

    def replug(self, *, new_path: bool = True) -> str:
        """Plug back in, on a new pty path unless ``new_path`` is False. Relays power up open.

        Returns the new pty path.
        """

        def do() -> str:
            with self._lock:
                for number in self._states:
                    self._states[number] = False
            self._plug(new_path=new_path)
            return self._pty_path or ""

        return self._call(do)

    # -- for the boards ----------------------------------------------------------------------------

    @abstractmethod
    def _numbers(self) -> range:
        """The relay numbers the board has."""

    @abstractmethod
    def _number_of(self, spec: Any) -> int:
        """The relay number a profile's relay spec names (its channel or coil)."""

    @abstractmethod
    def _on_bytes(self, data: bytes) -> None:
        """Handle bytes from the host (board thread, lock held); write answers with :meth:`_write`."""

    def _check_number(self, number: int) -> None:
        if number not in self._numbers():
            raise ValueError(f"relay {number} is not on this board ({self._numbers()})")

    def _set(self, number: int, closed: bool) -> None:
        """Switch relay ``number`` (lock held)."""
        self._states[number] = closed
        self.switch_log.append((number, closed))

    def _received(self, data: bytes) -> None:
        # Waiters are woken after each request, whether or not a hung board handled it.
        with self._lock:
            if not self._silent:
                self._on_bytes(data)
            self._lock.notify_all()


class SimLcusBoard(SimRelayBoard):
    """An LCUS/CH340 USB relay board with ``channels`` relays (channel 1 first).

    Test handles beyond :class:`SimRelayBoard`'s: :attr:`frames` (every well-formed frame received),
    :attr:`bad_frames` (frames whose sum did not match, or for a channel the board lacks: ignored, as
    the firmware does), :attr:`garbage` (bytes that could not start a frame), :attr:`queries`.
    """

    def __init__(
        self,
        channels: int = 4,
        *,
        readback: bool = False,
        link: str | Path | None = None,
        closed: Mapping[int, bool] | None = None,
    ) -> None:
        self.readback = readback
        self.frames: list[bytes] = []
        self.bad_frames: list[bytes] = []
        self.garbage = 0
        self.queries = 0
        self._buffer = b""
        super().__init__(channels, link=link, closed=closed)

    def _numbers(self) -> range:
        return range(1, self.relays + 1)

    def _number_of(self, spec: Any) -> int:
        return int(spec.channel)

    def _on_bytes(self, data: bytes) -> None:
        buf = self._buffer + data
        while buf:
            if buf[0] == 0xFF:
                buf = buf[1:]
                self.queries += 1
                if self.readback:
                    lines = [f"CH{n}: {'ON' if on else 'OFF'}\r\n" for n, on in sorted(self._states.items())]
                    self._write("".join(lines).encode("ascii"))
                continue
            if buf[0] != START:
                buf = buf[1:]
                self.garbage += 1
                continue
            if len(buf) < 4:
                break
            frame, buf = buf[:4], buf[4:]
            _, channel, state, checksum = frame
            if state not in (0, 1) or (START + channel + state) & 0xFF != checksum or channel not in self._numbers():
                self.bad_frames.append(frame)
                continue
            self.frames.append(frame)
            self._set(channel, bool(state))
        self._buffer = buf

    @staticmethod
    def frame(channel: int, closed: bool) -> bytes:
        """The frame a host must send for this switch (for assertions)."""
        return lcus_frame(channel, closed)


class SimModbusBoard(SimRelayBoard):
    """A Modbus RTU relay board with ``coils`` relays (coil 0 first) answering as unit ``unit``.

    Test handles beyond :class:`SimRelayBoard`'s: :attr:`requests` (``(function_code, address, count)``
    of each request for this unit), :attr:`other_units` (requests for another unit id, not answered),
    :attr:`errors_sent` (exception responses).
    """

    def __init__(
        self,
        coils: int = 8,
        *,
        unit: int = 1,
        link: str | Path | None = None,
        closed: Mapping[int, bool] | None = None,
    ) -> None:
        self.unit = unit
        self.requests: list[tuple[int, int, int]] = []
        self.other_units = 0
        self.errors_sent = 0
        self._framer = FramerRTU(DecodePDU(is_server=True))
        self._buffer = b""
        super().__init__(coils, link=link, closed=closed)

    def _numbers(self) -> range:
        return range(self.relays)

    def _number_of(self, spec: Any) -> int:
        return int(spec.coil)

    def _on_bytes(self, data: bytes) -> None:
        self._buffer += data
        while self._buffer:
            try:
                used, request = self._framer.handleFrame(self._buffer, 0, 0)
            except ModbusException:  # a frame with a good CRC but a body pymodbus cannot decode
                self._buffer = b""
                return
            self._buffer = self._buffer[used:]
            if request is None:
                return  # an incomplete frame (wait for more) or garbage the framer dropped
            if request.dev_id != self.unit:
                self.other_units += 1
                continue
            response = self._respond(request)
            response.dev_id = self.unit
            self._write(self._framer.buildFrame(response))

    def _respond(self, request: ModbusPDU) -> ModbusPDU:
        fc = request.function_code
        if isinstance(request, WriteSingleCoilRequest):
            self.requests.append((fc, request.address, 1))
            if request.address not in self._numbers():
                return self._error(fc, ExcCodes.ILLEGAL_ADDRESS)
            self._set(request.address, bool(request.bits[0]))
            return WriteSingleCoilResponse(address=request.address, bits=[self._states[request.address]])
        if isinstance(request, WriteMultipleCoilsRequest):
            self.requests.append((fc, request.address, request.count))
            span = range(request.address, request.address + request.count)
            if not all(n in self._numbers() for n in span):
                return self._error(fc, ExcCodes.ILLEGAL_ADDRESS)
            for number, bit in zip(span, request.bits, strict=False):
                self._set(number, bool(bit))
            return WriteMultipleCoilsResponse(address=request.address, count=request.count)
        if isinstance(request, ReadCoilsRequest) and fc == ReadCoilsRequest.function_code:
            self.requests.append((fc, request.address, request.count))
            span = range(request.address, request.address + request.count)
            if not all(n in self._numbers() for n in span):
                return self._error(fc, ExcCodes.ILLEGAL_ADDRESS)
            return ReadCoilsResponse(bits=[self._states[n] for n in span])
        self.requests.append((fc, request.address, request.count))
        return self._error(fc, ExcCodes.ILLEGAL_FUNCTION)

    def _error(self, function_code: int, code: int) -> ExceptionResponse:
        self.errors_sent += 1
        return ExceptionResponse(function_code, code)


def simulated_board(profile: RelayProfile, *, link: str | Path | None = None) -> SimRelayBoard:
    """A simulated board that fits a serial relay profile (enough relays, the profile's unit and readback)."""
    if isinstance(profile, LcusRelayProfile):
        channels = max(spec.channel for _, _, spec in profile.relays())
        return SimLcusBoard(channels, readback=profile.readback, link=link)
    if isinstance(profile, ModbusRelayProfile):
        coils = max(spec.coil for _, _, spec in profile.relays()) + 1
        return SimModbusBoard(coils, unit=profile.unit, link=link)
    raise ValueError(f"a {profile.kind} relay board is not on a serial port; use sim.gpio_relays")
